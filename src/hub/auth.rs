//! Where the token and the endpoint come from, as huggingface_hub resolves them
//! (`constants.py`, `utils/_auth.py`):
//!
//! - token: `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN` (an empty `HF_TOKEN` falls through to it),
//!   else the file `HF_TOKEN_PATH` (default `$HF_HOME/token`; `HF_HOME` defaults to
//!   `$XDG_CACHE_HOME/huggingface`, then `~/.cache/huggingface`). Carriage returns and newlines
//!   are removed and the value trimmed; an empty result is no token. (The client's OIDC and
//!   Colab sources have no equivalent here.)
//! - endpoint: `HF_ENDPOINT` without trailing `/`, default `https://huggingface.co`.

use std::path::PathBuf;

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where a token was found (named in error messages, as the client does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `HF_TOKEN` or `HUGGING_FACE_HUB_TOKEN`.
    Env,
    /// The token file.
    File,
}

/// A token and where it came from.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub value: String,
    pub source: TokenSource,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({:?}, hf_***)", self.source)
    }
}

/// The token from the process environment.
pub fn token_from_env() -> Option<Token> {
    resolve_token(&|k| std::env::var(k).ok())
}

/// The endpoint from the process environment.
pub fn endpoint_from_env() -> String {
    resolve_endpoint(&|k| std::env::var(k).ok())
}

/// The token file the client reads: `HF_TOKEN_PATH`, else `<HF_HOME>/token`.
pub fn token_path(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    match env("HF_TOKEN_PATH") {
        Some(p) => expand_user(&p, env),
        None => hf_home(env).join("token"),
    }
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    match env("HF_HOME") {
        Some(h) => expand_user(&h, env),
        None => {
            let cache = env("XDG_CACHE_HOME").unwrap_or_else(|| format!("{}/.cache", home(env)));
            expand_user(&cache, env).join("huggingface")
        }
    }
}

/// The client's resolution order over an environment lookup (tests pass a map).
pub fn resolve_token(env: &dyn Fn(&str) -> Option<String>) -> Option<Token> {
    // `os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")`: only an empty
    // HF_TOKEN falls through; a blank one cleans to nothing and the file is read next.
    let from_env = env("HF_TOKEN").filter(|v| !v.is_empty()).or_else(|| env("HUGGING_FACE_HUB_TOKEN"));
    if let Some(value) = from_env.as_deref().and_then(clean_token) {
        return Some(Token { value, source: TokenSource::Env });
    }
    let text = std::fs::read_to_string(token_path(env)).ok()?;
    clean_token(&text).map(|value| Token { value, source: TokenSource::File })
}

/// `HF_ENDPOINT` without its trailing slashes, or the public Hub.
pub fn resolve_endpoint(env: &dyn Fn(&str) -> Option<String>) -> String {
    env("HF_ENDPOINT").map(|e| e.trim_end_matches('/').to_string()).unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

/// `_clean_token`: drop `\r` and `\n`, trim; empty is no token.
fn clean_token(raw: &str) -> Option<String> {
    let t: String = raw.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn home(env: &dyn Fn(&str) -> Option<String>) -> String {
    env("HOME").unwrap_or_else(|| "~".to_string())
}

/// `os.path.expanduser` for a leading `~` or `~/`.
fn expand_user(p: &str, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    match p.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => PathBuf::from(format!("{}{rest}", home(env))),
        _ => PathBuf::from(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn token_order_is_the_clients() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_file\r\n").unwrap();
        let home = dir.path().to_str().unwrap();
        let tok = |pairs: &[(&str, &str)]| resolve_token(&env_of(pairs)).map(|t| (t.value, t.source));
        let file = Some(("hf_file".to_string(), TokenSource::File));
        assert_eq!(tok(&[("HF_HOME", home)]), file);
        assert_eq!(tok(&[("HF_HOME", home), ("HF_TOKEN", " hf_a\n")]), Some(("hf_a".into(), TokenSource::Env)));
        assert_eq!(
            tok(&[("HF_HOME", home), ("HF_TOKEN", "hf_a"), ("HUGGING_FACE_HUB_TOKEN", "hf_b")]),
            Some(("hf_a".into(), TokenSource::Env))
        );
        // An empty HF_TOKEN falls through to HUGGING_FACE_HUB_TOKEN ...
        assert_eq!(
            tok(&[("HF_HOME", home), ("HF_TOKEN", ""), ("HUGGING_FACE_HUB_TOKEN", "hf_b")]),
            Some(("hf_b".into(), TokenSource::Env))
        );
        // ... a blank one cleans to nothing and the file is read.
        assert_eq!(tok(&[("HF_HOME", home), ("HF_TOKEN", "  "), ("HUGGING_FACE_HUB_TOKEN", "hf_b")]), file);
        assert_eq!(tok(&[("HF_HOME", "/nonexistent/hf")]), None);
    }

    #[test]
    fn token_path_honours_hf_token_path_xdg_and_home() {
        let p = |pairs: &[(&str, &str)]| token_path(&env_of(pairs));
        assert_eq!(p(&[("HOME", "/h")]), PathBuf::from("/h/.cache/huggingface/token"));
        assert_eq!(p(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]), PathBuf::from("/x/huggingface/token"));
        assert_eq!(p(&[("HOME", "/h"), ("HF_HOME", "~/hf")]), PathBuf::from("/h/hf/token"));
        assert_eq!(p(&[("HOME", "/h"), ("HF_HOME", "/a"), ("HF_TOKEN_PATH", "/t/tok")]), PathBuf::from("/t/tok"));
    }

    #[test]
    fn endpoint_default_and_trailing_slash() {
        assert_eq!(resolve_endpoint(&env_of(&[])), "https://huggingface.co");
        assert_eq!(resolve_endpoint(&env_of(&[("HF_ENDPOINT", "http://127.0.0.1:9/")])), "http://127.0.0.1:9");
    }
}
