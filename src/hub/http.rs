//! One HTTP client for every Hub request, with the retries of huggingface_hub's `http_backoff`.
//!
//! Retried: connection failures and timeouts, HTTP 408, 429 and every 5xx (the client's 408,
//! 429, 500, 502, 503, 504, and the other 5xx too); not retried: other 4xx.
//! Schedule: at most [`MAX_RETRIES`] retries (6 attempts) after waits of `base`, 2·`base`,
//! 4·`base`, 8·`base`, 8·`base` (the client's 1, 2, 4, 8, 8 s with the default base of one
//! second; ~23 s in all); a `Retry-After` of N seconds on a 429/503 waits N s instead (at most a
//! minute). `RANKFORGE_HUB_RETRY_BASE_MS` sets `base` (tests use a few milliseconds).
//!
//! Unlike the Python client, every request retries, the NDJSON commit included: a commit whose
//! reply is lost may then be made twice, which leaves the same files on the Hub.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::Method;

use crate::error::{Error, Result};

/// Retries after the first attempt, as `http_backoff(max_retries=5)`.
pub const MAX_RETRIES: u32 = 5;
/// The environment variable that sets the first wait in milliseconds (default 1000).
pub const RETRY_BASE_ENV: &str = "RANKFORGE_HUB_RETRY_BASE_MS";
/// Timeout of one JSON API request; file transfers have none (only the connect timeout).
const API_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The waits before retry 1, 2, …: `base·2^i`, capped at `8·base`.
pub fn backoff_schedule(base: Duration) -> Vec<Duration> {
    (0..MAX_RETRIES).map(|i| (base * 2u32.pow(i)).min(base * 8)).collect()
}

/// The first wait: `RANKFORGE_HUB_RETRY_BASE_MS` or one second.
pub fn retry_base_from_env() -> Duration {
    let ms = std::env::var(RETRY_BASE_ENV).ok().and_then(|v| v.trim().parse::<u64>().ok());
    Duration::from_millis(ms.unwrap_or(1000))
}

/// What a request sends.
pub enum Body {
    Empty,
    /// `application/json`.
    Json(serde_json::Value),
    /// Raw bytes with a content type (the NDJSON commit, LFS JSON).
    Bytes { data: Vec<u8>, content_type: &'static str },
    /// `len` bytes of a local file from `offset`, streamed (an LFS object or one of its parts);
    /// reopened on each attempt, read only.
    File { path: PathBuf, offset: u64, len: u64 },
}

/// One request: `what` names it in errors ("preupload user/m", "LFS upload of model.safetensors").
pub struct Request {
    pub what: String,
    pub method: Method,
    pub url: String,
    pub body: Body,
    /// Send `authorization: Bearer <token>` (not to pre-signed LFS URLs, as the client).
    pub auth: bool,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn new(what: impl Into<String>, method: Method, url: impl Into<String>, body: Body) -> Request {
        Request { what: what.into(), method, url: url.into(), body, auth: true, headers: Vec::new() }
    }
}

/// The Hub connection: endpoint, token and the retrying client.
pub struct Http {
    client: Client,
    pub endpoint: String,
    token: String,
    base: Duration,
}

impl Http {
    pub fn new(endpoint: &str, token: &str, retry_base: Duration) -> Result<Http> {
        let client = Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(None)
            .user_agent(concat!("rankforge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Input(format!("hub: cannot build an HTTP client for {endpoint}: {e}")))?;
        Ok(Http { client, endpoint: endpoint.trim_end_matches('/').to_string(), token: token.to_string(), base: retry_base })
    }

    /// Sends `req`, retrying transient failures; `Ok` is any response that is not a transient
    /// failure (check it with [`check`]), or the last transient one once the retries are spent.
    pub fn send(&self, req: &Request) -> Result<(Response, u32)> {
        let schedule = backoff_schedule(self.base);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let wait = match self.build(req).and_then(|b| b.send().map_err(SendError::Http)) {
                Ok(resp) if !is_transient(resp.status().as_u16()) => return Ok((resp, attempt)),
                Ok(resp) => {
                    if attempt > MAX_RETRIES {
                        return Ok((resp, attempt));
                    }
                    let wait = retry_after(&resp).unwrap_or(schedule[attempt as usize - 1]);
                    tracing::warn!("hub: {}: HTTP {} from {}; retry {attempt}/{MAX_RETRIES} in {wait:?}", req.what, resp.status().as_u16(), req.url);
                    wait
                }
                Err(SendError::File(e)) => return Err(e),
                Err(SendError::Http(e)) => {
                    if attempt > MAX_RETRIES {
                        return Err(Error::Hub {
                            what: req.what.clone(),
                            url: req.url.clone(),
                            status: None,
                            msg: format!("cannot reach the Hub after {attempt} attempts: {}", error_chain(&e)),
                            transient: true,
                        });
                    }
                    let wait = schedule[attempt as usize - 1];
                    tracing::warn!("hub: {}: {} ({}); retry {attempt}/{MAX_RETRIES} in {wait:?}", req.what, error_chain(&e), req.url);
                    wait
                }
            };
            std::thread::sleep(wait);
        }
    }

    /// [`send`](Self::send), then [`check`].
    pub fn send_ok(&self, req: &Request) -> Result<Response> {
        let (resp, attempts) = self.send(req)?;
        check(resp, &req.what, &req.url, attempts)
    }

    /// [`send_ok`](Self::send_ok) and the reply as JSON.
    pub fn send_json(&self, req: &Request) -> Result<serde_json::Value> {
        let resp = self.send_ok(req)?;
        resp.json::<serde_json::Value>().map_err(|e| malformed(req, format!("the reply is not JSON: {e}")))
    }

    fn build(&self, req: &Request) -> std::result::Result<RequestBuilder, SendError> {
        let mut b = self.client.request(req.method.clone(), &req.url);
        if req.auth {
            b = b.bearer_auth(&self.token);
        }
        for (k, v) in &req.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        Ok(match &req.body {
            Body::Empty => b.timeout(API_TIMEOUT),
            Body::Json(v) => b.timeout(API_TIMEOUT).json(v),
            Body::Bytes { data, content_type } => {
                b.timeout(API_TIMEOUT).header(reqwest::header::CONTENT_TYPE, *content_type).body(data.clone())
            }
            Body::File { path, offset, len } => {
                let open = || -> std::io::Result<std::fs::File> {
                    let mut f = std::fs::File::open(path)?;
                    f.seek(SeekFrom::Start(*offset))?;
                    Ok(f)
                };
                let f = open().map_err(|e| SendError::File(Error::io(path, e)))?;
                b.body(reqwest::blocking::Body::sized(f.take(*len), *len))
            }
        })
    }
}

enum SendError {
    Http(reqwest::Error),
    File(Error),
}

/// 408, 429 and 5xx are retried.
pub fn is_transient(status: u16) -> bool {
    status == 408 || status == 429 || (500..600).contains(&status)
}

/// A successful response, or the error the Hub gave: its `X-Error-Message` header, else the
/// `error` of a JSON body, else the start of the body.
pub fn check(resp: Response, what: &str, url: &str, attempts: u32) -> Result<Response> {
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        return Ok(resp);
    }
    let header = resp.headers().get("x-error-message").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = resp.text().unwrap_or_default();
    let message = header.or_else(|| error_of_body(&body)).unwrap_or_else(|| body.chars().take(200).collect());
    let transient = is_transient(status);
    let retried = if transient { format!(" (after {attempts} attempts)") } else { String::new() };
    Err(Error::Hub {
        what: what.to_string(),
        url: url.to_string(),
        status: Some(status),
        msg: format!("HTTP {status}{retried}: {}", message.trim()),
        transient,
    })
}

/// A reply that is not what the protocol says (exit 2: retrying cannot fix the server).
pub fn malformed(req: &Request, msg: impl Into<String>) -> Error {
    Error::Hub { what: req.what.clone(), url: req.url.clone(), status: None, msg: msg.into(), transient: false }
}

fn error_of_body(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.get("error").and_then(|e| e.as_str()).map(str::to_string)
}

/// `Retry-After: <seconds>` on a 429 or 503.
fn retry_after(resp: &Response) -> Option<Duration> {
    if !matches!(resp.status().as_u16(), 429 | 503) {
        return None;
    }
    let secs: u64 = resp.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// The causes under reqwest's "error sending request for url (...)" (the URL is in the
/// message already): "client error (Connect): tcp connect error: Connection refused".
fn error_chain(e: &reqwest::Error) -> String {
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    if causes.is_empty() { e.to_string() } else { causes.join(": ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_the_clients_exponential_backoff() {
        let s = |v: &[u64]| v.iter().map(|&x| Duration::from_secs(x)).collect::<Vec<_>>();
        assert_eq!(backoff_schedule(Duration::from_secs(1)), s(&[1, 2, 4, 8, 8]));
        assert_eq!(backoff_schedule(Duration::from_millis(5)).iter().sum::<Duration>(), Duration::from_millis(115));
    }

    #[test]
    fn transient_statuses() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(is_transient(s), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 422] {
            assert!(!is_transient(s), "{s}");
        }
    }

    #[test]
    fn error_body_message() {
        assert_eq!(error_of_body(r#"{"error":"Invalid token"}"#).as_deref(), Some("Invalid token"));
        assert_eq!(error_of_body("oops"), None);
    }
}
