//! Git LFS uploads as huggingface_hub does them (`lfs.py`): one batch request per 256 objects,
//! then for each object the Hub does not have yet (it has `actions`) a basic `PUT` of the bytes,
//! or, when the upload action's header has a `chunk_size`, a multipart upload (one `PUT` per
//! part to the URLs under the header's numeric keys, then a completion `POST` of the parts'
//! ETags); then the `verify` action when there is one.

use reqwest::Method;
use serde_json::{json, Value};

use super::http::{malformed, Body, Http, Request};
use super::upload::{LocalFile, BATCH_MAX_FILES};
use crate::error::{Error, Result};

const LFS_JSON: &str = "application/vnd.git-lfs+json";

/// What an upload sent through LFS.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LfsStats {
    /// Objects whose bytes were sent.
    pub uploaded: usize,
    /// Objects the Hub already had (no `actions`).
    pub present: usize,
}

/// The batch request body for `files` (sha256 computed) at `revision`.
pub fn batch_payload(files: &[LocalFile], revision: &str) -> Value {
    let objects: Vec<Value> = files.iter().map(|f| json!({"oid": f.sha256, "size": f.size})).collect();
    json!({
        "operation": "upload",
        "transfers": ["basic", "multipart"],
        "objects": objects,
        "hash_algo": "sha256",
        "ref": {"name": revision},
    })
}

/// Uploads `files` (LFS mode, sha256 computed) of model repo `repo` at `revision`.
pub fn upload(http: &Http, repo: &str, revision: &str, files: &[LocalFile]) -> Result<LfsStats> {
    let mut stats = LfsStats::default();
    let mut actions = Vec::new();
    for chunk in files.chunks(BATCH_MAX_FILES) {
        let req = Request {
            headers: vec![("Accept".into(), LFS_JSON.into())],
            ..Request::new(
                format!("LFS batch for {repo}"),
                Method::POST,
                format!("{}/{repo}.git/info/lfs/objects/batch", http.endpoint),
                Body::Bytes { data: batch_payload(chunk, revision).to_string().into_bytes(), content_type: LFS_JSON },
            )
        };
        let reply = http.send_json(&req)?;
        let objects = reply.get("objects").and_then(Value::as_array).ok_or_else(|| malformed(&req, "no `objects` list"))?;
        let errors: Vec<String> = objects
            .iter()
            .filter_map(|o| o.get("error").map(|e| format!("{}: {}", o["oid"], e.get("message").unwrap_or(e))))
            .collect();
        if !errors.is_empty() {
            return Err(malformed(&req, format!("LFS batch API returned errors: {}", errors.join("; "))));
        }
        actions.extend(objects.iter().cloned());
    }
    // Uploaded one after the other (the client uses up to 5 threads; rank 0's upload is I/O bound
    // and one stream keeps the order reproducible).
    for action in actions {
        let oid = action.get("oid").and_then(Value::as_str).unwrap_or_default();
        let file = files.iter().find(|f| f.sha256.as_deref() == Some(oid)).ok_or_else(|| Error::Hub {
            what: format!("LFS batch for {repo}"),
            url: format!("{}/{repo}.git/info/lfs/objects/batch", http.endpoint),
            status: None,
            msg: format!("the reply names object {oid}, which was not asked for"),
            transient: false,
        })?;
        match action.get("actions") {
            None | Some(Value::Null) => stats.present += 1,
            Some(acts) => {
                upload_object(http, file, acts)?;
                stats.uploaded += 1;
            }
        }
    }
    Ok(stats)
}

/// `lfs_upload`: the upload action, then `verify`.
fn upload_object(http: &Http, file: &LocalFile, actions: &Value) -> Result<()> {
    let what = format!("LFS upload of {}", file.path_in_repo);
    let upload = actions.get("upload").ok_or_else(|| bad_action(http, &what, "no `upload` action"))?;
    let href = href_of(http, upload).ok_or_else(|| bad_action(http, &what, "the upload action has no `href`"))?;
    let header = upload.get("header").and_then(Value::as_object).cloned().unwrap_or_default();
    match header.get("chunk_size") {
        Some(cs) => {
            let chunk = cs
                .as_u64()
                .or_else(|| cs.as_str().and_then(|s| s.parse().ok()))
                .filter(|&c| c > 0)
                .ok_or_else(|| bad_action(http, &what, format!("`chunk_size` should be an integer, got {cs}")))?;
            upload_multipart(http, file, &what, &href, &header, chunk)?;
        }
        None => {
            // The action's headers, as git-lfs's basic transfer says (the Hub sends none).
            let headers = header.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect();
            let req = Request {
                auth: false,
                headers,
                ..Request::new(what.clone(), Method::PUT, href, Body::File { path: file.abs.clone(), offset: 0, len: file.size })
            };
            http.send_ok(&req)?;
        }
    }
    if let Some(verify) = actions.get("verify").filter(|v| !v.is_null()) {
        let href = href_of(http, verify).ok_or_else(|| bad_action(http, &what, "the verify action has no `href`"))?;
        let body = Body::Json(json!({"oid": file.sha256, "size": file.size}));
        http.send_ok(&Request::new(format!("LFS verify of {}", file.path_in_repo), Method::POST, href, body))?;
    }
    Ok(())
}

/// Parts in the order of their numbers, each `chunk` bytes (the last one shorter), then the
/// completion `POST` to the upload href.
fn upload_multipart(
    http: &Http,
    file: &LocalFile,
    what: &str,
    href: &str,
    header: &serde_json::Map<String, Value>,
    chunk: u64,
) -> Result<()> {
    let parts = sorted_part_urls(header);
    if parts.len() as u64 != file.size.div_ceil(chunk) {
        return Err(bad_action(http, what, format!("{} part URLs for {} bytes in parts of {chunk}", parts.len(), file.size)));
    }
    let mut etags = Vec::new();
    for (i, url) in parts.iter().enumerate() {
        let offset = i as u64 * chunk;
        let len = chunk.min(file.size - offset);
        let req = Request {
            auth: false,
            ..Request::new(
                format!("{what} (part {})", i + 1),
                Method::PUT,
                fix_endpoint(http, url),
                Body::File { path: file.abs.clone(), offset, len },
            )
        };
        let resp = http.send_ok(&req)?;
        let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        if etag.is_empty() {
            return Err(malformed(&req, format!("no ETag returned for part {}", i + 1)));
        }
        etags.push(json!({"partNumber": i + 1, "etag": etag}));
    }
    let done = json!({"oid": file.sha256, "parts": etags});
    let req = Request {
        auth: false,
        headers: vec![("Accept".into(), LFS_JSON.into())],
        ..Request::new(
            format!("{what} (completion)"),
            Method::POST,
            href,
            Body::Bytes { data: done.to_string().into_bytes(), content_type: LFS_JSON },
        )
    };
    http.send_ok(&req)?;
    Ok(())
}

/// The header's numeric keys, by number (`_get_sorted_parts_urls`).
fn sorted_part_urls(header: &serde_json::Map<String, Value>) -> Vec<String> {
    let mut parts: Vec<(u64, String)> = header
        .iter()
        .filter(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
        .collect();
    parts.sort();
    parts.into_iter().map(|(_, u)| u).collect()
}

fn href_of(http: &Http, action: &Value) -> Option<String> {
    action.get("href").and_then(Value::as_str).map(|h| fix_endpoint(http, h))
}

/// `fix_hf_endpoint_in_url`: with a custom endpoint, URLs on the public Hub point at it.
fn fix_endpoint(http: &Http, url: &str) -> String {
    const PUBLIC: [&str; 2] = ["https://huggingface.co", "https://hub-ci.huggingface.co"];
    if PUBLIC.contains(&http.endpoint.as_str()) {
        return url.to_string();
    }
    PUBLIC.iter().fold(url.to_string(), |u, p| u.replace(p, &http.endpoint))
}

fn bad_action(http: &Http, what: &str, msg: impl Into<String>) -> Error {
    let url = http.endpoint.clone();
    Error::Hub { what: what.to_string(), url, status: None, msg: format!("malformed LFS batch reply: {}", msg.into()), transient: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_urls_sorted_by_number() {
        let header = json!({"chunk_size": "5", "10": "u10", "2": "u2", "1": "u1", "x": "no"});
        assert_eq!(sorted_part_urls(header.as_object().unwrap()), ["u1", "u2", "u10"]);
    }

    #[test]
    fn batch_payload_shape() {
        let f = super::super::upload::LocalFile {
            path_in_repo: "m.safetensors".into(),
            abs: "/nonexistent".into(),
            size: 3,
            sample: vec![],
            mode: None,
            should_ignore: false,
            remote_oid: None,
            sha256: Some("ab".into()),
        };
        assert_eq!(
            batch_payload(&[f], "main"),
            json!({"operation": "upload", "transfers": ["basic", "multipart"], "objects": [{"oid": "ab", "size": 3}],
                   "hash_algo": "sha256", "ref": {"name": "main"}})
        );
    }
}
