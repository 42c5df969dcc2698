//! What start-up tells the operator: where the server listens and on which engine,
//! and in dev mode the generated tokens, printed (never logged: log pipelines must
//! not carry tokens).

use std::net::SocketAddr;

use crate::auth::DevCredentials;
use crate::http::AppState;

/// Logs where the server listens and on which engine; in dev mode, prints the
/// generated tokens and how to try them.
pub(super) fn announce(state: &AppState, addr: SocketAddr, dev: Option<&DevCredentials>, durable: bool) {
    let engine = state.store.name();
    tracing::info!(%addr, engine, partitions = state.config.partitions, "tickstream listening");
    if !durable {
        tracing::warn!(
            "REDIS_URL is not set: using the embedded in-memory engine. History is NOT durable and is \
             lost when the process stops; set REDIS_URL=redis://127.0.0.1:6379 for production."
        );
    }
    if let (Some(_), false) = (dev, addr.ip().is_loopback()) {
        // TICKSTREAM_DEV asked for it (config refuses otherwise): say so loudly, in the
        // log and on the terminal.
        tracing::warn!(%addr, "DEV MODE ON A NON-LOOPBACK ADDRESS: generated tokens are served to the network");
        eprintln!(
            "\n  !!! DEV MODE ON {addr}, NOT LOOPBACK (TICKSTREAM_DEV=1): anyone who reaches this address\n  \
             !!! and reads the tokens below may read every channel and write ticks. Set\n  \
             !!! TICKSTREAM_JWT_SECRET (or a public key) for anything but a private test.\n"
        );
    }
    if let Some(dev) = dev {
        let base = format!("http://{addr}");
        let ws = format!("ws://{addr}");
        // Printed, not logged: these are for the operator's terminal, and log
        // pipelines must never carry tokens.
        eprintln!(
            "\n  DEV MODE: no TICKSTREAM_JWT_SECRET / TICKSTREAM_JWT_PUBLIC_KEY / TICKSTREAM_HMAC_SECRET set.\n  \
             {secret}\n\n  \
             Dashboard:     {base}/#token={reader}\n  \
             Reader token:  {reader}   (24 h, channels [\"*\"])\n  \
             Ingest token:  {ingest}\n\n  \
             Try it:\n    \
             curl -s -X POST {base}/api/v1/ingest -H 'Authorization: Bearer {ingest}' \\\n      \
             -H 'Content-Type: application/json' -d '{{\"channel\":\"demo.BTC-USD\",\"value\":42000.5}}'\n    \
             curl -s '{base}/api/v1/channels/demo.BTC-USD/ticks' -H 'Authorization: Bearer {reader}'\n    \
             websocat '{ws}/ws/demo.BTC-USD?since=0-0' -H 'Authorization: Bearer {reader}'\n",
            reader = dev.reader_token,
            ingest = dev.ingest_token,
            secret = match durable {
                true =>
                    "A random signing secret is kept in this Redis, so these tokens outlive restarts; \
                         set TICKSTREAM_JWT_SECRET for production.",
                false => "A random signing secret was made for this run; tokens below stop working on restart.",
            },
        );
    }
}
