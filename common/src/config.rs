//! Configuration pieces both binaries use: flags win over a YAML file whose keys are the flag
//! names, and every error names the setting at fault.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

/// A setting that cannot be used, named as the operator wrote it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

pub fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

/// A number of seconds (fractions allowed) as a duration.
pub fn seconds(key: &'static str, value: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| invalid(key, format!("{value} is not a number of seconds >= 0")))
}

/// Reads a YAML config file into `T` (which should deny unknown fields); an empty file is the
/// default.
pub fn read_yaml<T: DeserializeOwned + Default>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::File { path: path.to_owned(), message: e.to_string() })?;
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    serde_saphyr::from_str(&text)
        .map_err(|e| ConfigError::File { path: path.to_owned(), message: e.to_string().replace('\n', " ") })
}

/// The flag's value if given, else the file's, else empty.
pub fn list<T: Clone>(flag: &[T], file: Option<Vec<T>>) -> Vec<T> {
    if flag.is_empty() { file.unwrap_or_default() } else { flag.to_vec() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// Parses `--log-format` (text when unset).
    pub fn parse(value: Option<&str>) -> Result<Self, ConfigError> {
        match value.unwrap_or("text") {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(invalid("log-format", format!("{other:?} is not text or json"))),
        }
    }
}
