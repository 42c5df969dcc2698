//! The accept loop: one task per TCP connection, HTTP/1.1 with upgrades, graceful
//! shutdown.
//!
//! Ours rather than `axum::serve` for one reason: `axum::serve` runs hyper without a
//! timer, and without a timer hyper cannot time out a request's headers, so a client
//! that opens a socket and sends its headers a byte a minute (slowloris) would hold
//! the socket forever. Here every request's headers must arrive within
//! [`HEADER_TIMEOUT`], an idle keep-alive connection included.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

/// How long a request's headers may take to arrive, counted from the moment the
/// server starts reading them (for a kept-alive connection: from the end of the
/// previous response).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, lets
/// every connection finish the request it is in, and returns when all have closed.
/// Upgraded connections (WebSockets) are no longer HTTP connections and end on their
/// own (sessions watch the same shutdown).
pub async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    // Dropping `stop_tx` tells every connection to finish; every connection task holds
    // a `done_tx`, so `done_rx` ends when the last one has.
    let (stop_tx, stop_rx) = watch::channel(());
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Ticks are small and latency matters more than packet count.
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(tcp, peer, app.clone(), stop_rx.clone(), done_tx.clone()));
    }
    drop(listener);
    drop(stop_tx);
    drop(done_tx);
    let _ = done_rx.recv().await;
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    mut stop: watch::Receiver<()>,
    _done: mpsc::Sender<()>,
) {
    let service = app.map_request(move |req: Request<Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    let conn = builder
        .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
