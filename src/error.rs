//! The library's typed error. Every message names what the user has to look at: the file and
//! dotted key of a recipe, the data file, the checkpoint directory, the tensor.
//!
//! `main` maps errors to exit codes (see [`Error::exit_code`]) so that a launcher can tell a
//! fatal input error (do not retry) from a runtime failure (a restart may help).

use std::path::PathBuf;

/// Exit code for bad input: recipe, data, tokenizer, model files, prompt. Retrying cannot help.
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit code for failures while running (I/O, libtorch). A restart from a checkpoint may help.
pub const EXIT_RUNTIME: i32 = 1;
/// Exit code for a full disk or an exhausted quota (ENOSPC, EDQUOT; sysexits' EX_IOERR). What
/// was being written is discarded and the last complete checkpoint is intact; a restart would
/// fail the same way until space is freed, so launchers do not retry it.
pub const EXIT_NO_SPACE: i32 = 74;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A recipe problem: `file: key: what is wrong`.
    #[error("{}: {key}: {msg}", file.display())]
    Config { file: PathBuf, key: String, msg: String },
    /// Bad training or tokenizer-training data.
    #[error("{}: {msg}", path.display())]
    Data { path: PathBuf, msg: String },
    /// A model directory or checkpoint that cannot be used.
    #[error("{}: {msg}", path.display())]
    Model { path: PathBuf, msg: String },
    /// Any other bad user input (a command-line value, a prompt).
    #[error("{0}")]
    Input(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("tokenizer {}: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },
    /// The control plane or a collective failed (a peer died, the coordinator is gone).
    #[error("{0}")]
    Dist(String),
    /// Training produced non-finite values: too many skipped updates in a row, or weights that
    /// would be written as NaN/infinity. A runtime failure (exit 1): nothing non-finite is saved.
    #[error("{0}")]
    Diverged(String),
    /// Stopped on request (preemption) after checkpointing at a step boundary: not a failure.
    #[error("{0}")]
    Stopped(String),
    /// No Hugging Face Hub token, or one the Hub refuses (401) or that cannot write: bad input
    /// (exit 2), found before any upload (and before training when a run pushes).
    #[error("{0}")]
    HubAuth(String),
    /// A Hugging Face Hub request that failed: what was being done (with the repo or file), the
    /// URL, the HTTP status when one came back and the Hub's message. `transient` when it was a
    /// 5xx, 408, 429 or connection failure still failing after the retries (exit
    /// [`rankforge_proto::EXIT_HUB_UNAVAILABLE`], 69); otherwise the Hub refused the request
    /// (another 4xx, a malformed reply: exit 2). The local directory is never modified.
    #[error("hub: {what}: {msg} ({url})")]
    Hub { what: String, url: String, status: Option<u16>, msg: String, transient: bool },
    /// A text metric (ROUGE, BLEU, exact match) given a different number of predictions and
    /// references: bad input (exit 2).
    #[error("{predictions} predictions but {references} references: each prediction needs exactly one reference")]
    LengthMismatch { predictions: usize, references: usize },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn data(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Data { path: path.into(), msg: msg.into() }
    }

    pub fn model(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Model { path: path.into(), msg: msg.into() }
    }

    /// A full disk (ENOSPC) or an exhausted quota (EDQUOT).
    pub fn is_no_space(&self) -> bool {
        matches!(self, Error::Io { source, .. } if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
    }

    /// The process exit code `main` uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            e if e.is_no_space() => EXIT_NO_SPACE,
            Error::Config { .. }
            | Error::Data { .. }
            | Error::Model { .. }
            | Error::Input(_)
            | Error::Tokenizer { .. }
            | Error::HubAuth(_)
            | Error::LengthMismatch { .. }
            | Error::Hub { transient: false, .. } => EXIT_BAD_INPUT,
            Error::Hub { transient: true, .. } => rankforge_proto::EXIT_HUB_UNAVAILABLE,
            Error::Io { .. } | Error::Torch(_) | Error::Dist(_) | Error::Diverged(_) => EXIT_RUNTIME,
            Error::Stopped(_) => rankforge_proto::EXIT_STOPPED,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `std::fs` calls with the path in the error.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
