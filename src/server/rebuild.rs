//! `tickstream candles rebuild`'s work: recomputes candles from the ticks still in
//! the streams (docs/OPERATIONS.md "Candles"). The command line (`src/main.rs`)
//! prints what this reports.

use super::{open_engine, StartError};
use crate::config::Config;
use crate::engine::StoreError;
use crate::metrics::Metrics;

/// Why a rebuild did not run, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// Nothing to rebuild, or nothing it may rebuild; says which setting.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Recomputes the candles of `channel` (else of every channel) from the ticks still
/// in the streams, calling `done` after each channel with the ticks it folded;
/// returns how many channels it rebuilt. Safe while servers run (each channel's
/// rebuild is atomic against its appends).
pub async fn rebuild_candles(
    config: &Config,
    channel: Option<String>,
    mut done: impl FnMut(&str, usize),
) -> Result<usize, RebuildError> {
    if !config.store_settings().candles.enabled {
        return Err(RebuildError::Refused(
            "TICKSTREAM_CANDLES is off: there are no candles to rebuild".into(),
        ));
    }
    if config.redis_url.is_none() {
        return Err(RebuildError::Refused(
            "REDIS_URL is not set: the memory engine's candles live and die with its server".into(),
        ));
    }
    if let Some(c) = channel.as_deref().filter(|c| !crate::tick::is_valid_channel(c)) {
        return Err(RebuildError::Refused(format!("{c:?} is not a channel name")));
    }
    let store = open_engine(config, &Metrics::new()).await?.store;
    let channels = match channel {
        Some(c) => vec![c],
        None => store.channel_names().await?,
    };
    for channel in &channels {
        let ticks = store.rebuild_candles(channel).await?;
        done(channel, ticks);
    }
    Ok(channels.len())
}
