//! `[log]`: where rank 0 writes the metrics besides `metrics.jsonl`.

use serde::{Deserialize, Serialize};

/// `[log]`: the run's logs beyond `metrics.jsonl` (which is always written).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Write every metrics row as TensorBoard scalars to `<run.dir>/tb/` (tagged as the Hugging
    /// Face Trainer tags them: `train/loss`, `eval/loss`, ...); `false` writes no `tb/`.
    pub tensorboard: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { tensorboard: true }
    }
}

impl LogConfig {
    /// The defaults write no `[log]` section (recipe hashes stay as they were).
    pub fn is_default(&self) -> bool {
        *self == LogConfig::default()
    }
}
