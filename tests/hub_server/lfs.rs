//! Git LFS: the batch API (`/{repo}.git/info/lfs/objects/batch`), verify, and the transfer
//! hrefs the batch reply invents under the server's own endpoint (`/lfs-upload/{oid}`: basic
//! PUT; `/part/{n}` PUTs and a `/complete` POST for multipart). The hrefs stand for the
//! Hub's presigned storage URLs, so they take no token, as the real client sends none.

use serde_json::{json, Value};

use super::routes::{readable, writable, Req, Resp, Who};
use super::state::{sha1_hex, sha256_hex, Multipart, State};

const LFS_JSON: &str = "application/vnd.git-lfs+json";

/// `POST /{repo}.git/info/lfs/objects/{batch|verify}`.
pub fn objects(st: &mut State, r: &Req, who: Who, repo: &str, op: &str) -> Resp {
    match op {
        "batch" => batch(st, r, who, repo),
        "verify" => verify(st, r, who, repo),
        _ => Resp::error(404, "Sorry, we can't find the page you are looking for."),
    }
}

fn batch(st: &mut State, r: &Req, who: Who, repo: &str) -> Resp {
    if let Err(e) = writable(st, who, repo) {
        return e;
    }
    let body = match r.json() {
        Ok(b) => b,
        Err(e) => return e,
    };
    if body["operation"] != "upload" {
        return Resp::error(400, "the test Hub's LFS batch API takes \"operation\": \"upload\" only");
    }
    let offered = body["transfers"].as_array().cloned().unwrap_or_else(|| vec![json!("basic")]);
    let chunk = st.opts.multipart_chunk.filter(|_| offered.contains(&json!("multipart")));
    let Some(objects) = body["objects"].as_array() else {
        return Resp::error(400, "\"objects\" must be a list");
    };
    let mut out = vec![];
    for o in objects {
        let oid = o["oid"].as_str().unwrap_or("").to_string();
        let size = o["size"].as_u64().unwrap_or(0);
        out.push(batch_object(st, repo, &oid, size, o, chunk));
    }
    let transfer = if chunk.is_some() { "multipart" } else { "basic" };
    Resp::json(200, json!({"transfer": transfer, "objects": out, "hash_algo": "sha256"}))
        .header("Content-Type", LFS_JSON)
}

/// One object of the batch reply: no `actions` when it is stored already, else the upload
/// (basic, or multipart with `chunk_size` and one header entry per part) and verify actions.
fn batch_object(st: &mut State, repo: &str, oid: &str, size: u64, o: &Value, chunk: Option<u64>) -> Value {
    let valid_oid = oid.len() == 64 && oid.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid_oid || !o["size"].is_u64() || size == 0 {
        let message = format!("invalid object: oid {oid:?} (64 hex digits) and size {} (> 0)", o["size"]);
        return json!({"oid": oid, "size": size, "error": {"code": 422, "message": message}});
    }
    if st.lfs.contains_key(oid) {
        return json!({"oid": oid, "size": size, "authenticated": true});
    }
    let ep = &st.endpoint;
    let verify = json!({"href": format!("{ep}/{repo}.git/info/lfs/objects/verify")});
    let upload = match chunk {
        None => json!({"href": format!("{ep}/lfs-upload/{oid}")}),
        Some(chunk) => {
            let parts = size.div_ceil(chunk);
            let mut header = json!({"chunk_size": chunk.to_string()});
            for n in 1..=parts {
                header[n.to_string()] = json!(format!("{ep}/lfs-upload/{oid}/part/{n}"));
            }
            let mp = Multipart { size, chunk, parts: Default::default() };
            st.multipart.insert(oid.to_string(), mp);
            json!({"href": format!("{ep}/lfs-upload/{oid}/complete"), "header": header})
        }
    };
    json!({"oid": oid, "size": size, "authenticated": true,
           "actions": {"upload": upload, "verify": verify}})
}

/// The verify action: 200 when the object is stored with that size, else 404.
fn verify(st: &State, r: &Req, who: Who, repo: &str) -> Resp {
    if let Err(e) = readable(st, who, repo) {
        return e;
    }
    let body = match r.json() {
        Ok(b) => b,
        Err(e) => return e,
    };
    let oid = body["oid"].as_str().unwrap_or("");
    match st.lfs.get(oid) {
        Some(b) if body["size"].as_u64() == Some(b.len() as u64) => Resp::json(200, json!({"success": true})),
        _ => Resp::error(404, &format!("LFS object {oid} not found (or of another size)")),
    }
}

/// The transfer hrefs under `/lfs-upload/`.
pub fn transfer(st: &mut State, r: &Req, rest: &[&str]) -> Resp {
    match (r.method.as_str(), rest) {
        ("PUT", [oid]) => {
            let oid = oid.to_string();
            store(st, &oid, r.body.clone())
        }
        ("PUT", [oid, "part", n]) => put_part(st, r, oid, n),
        ("POST", [oid, "complete"]) => complete(st, r, oid),
        _ => Resp::error(404, "Sorry, we can't find the page you are looking for."),
    }
}

/// Stores an object whose bytes hash to `oid`.
fn store(st: &mut State, oid: &str, bytes: Vec<u8>) -> Resp {
    let got = sha256_hex(&bytes);
    if got != oid {
        return Resp::error(
            400,
            &format!("sha256 of the {} bytes received is {got}, not {oid}", bytes.len()),
        );
    }
    st.lfs.insert(oid.to_string(), bytes);
    st.received.push(oid.to_string());
    Resp { status: 200, headers: vec![], body: vec![] }
}

/// One multipart part: it must have the part's exact length; the reply's `ETag` is what the
/// completion must send back.
fn put_part(st: &mut State, r: &Req, oid: &str, n: &str) -> Resp {
    let Some(mp) = st.multipart.get_mut(oid) else {
        return Resp::error(404, &format!("no multipart upload in progress for {oid}"));
    };
    let parts = mp.size.div_ceil(mp.chunk);
    let Some(n) = n.parse::<u64>().ok().filter(|n| (1..=parts).contains(n)) else {
        return Resp::error(400, &format!("part {n} is not one of 1..={parts}"));
    };
    let want = if n < parts { mp.chunk } else { mp.size - mp.chunk * (parts - 1) };
    if r.body.len() as u64 != want {
        return Resp::error(400, &format!("part {n} has {} bytes, expected {want}", r.body.len()));
    }
    let etag = format!("\"{}\"", sha1_hex(&r.body));
    mp.parts.insert(n, (etag.clone(), r.body.clone()));
    Resp { status: 200, headers: vec![], body: vec![] }.header("ETag", &etag)
}

/// `{"oid", "parts": [{"partNumber", "etag"}]}`: every part, in order, with its etag.
fn complete(st: &mut State, r: &Req, oid: &str) -> Resp {
    let body = match r.json() {
        Ok(b) => b,
        Err(e) => return e,
    };
    let Some(mp) = st.multipart.get(oid) else {
        return Resp::error(404, &format!("no multipart upload in progress for {oid}"));
    };
    if body["oid"] != oid {
        return Resp::error(400, &format!("completion for {} posted to the href of {oid}", body["oid"]));
    }
    let listed = body["parts"].as_array().cloned().unwrap_or_default();
    let parts = mp.size.div_ceil(mp.chunk) as usize;
    if listed.len() != parts {
        return Resp::error(400, &format!("{} parts listed, expected {parts}", listed.len()));
    }
    let mut bytes = Vec::with_capacity(mp.size as usize);
    for (i, p) in listed.iter().enumerate() {
        let n = i as u64 + 1;
        match mp.parts.get(&n) {
            Some((etag, b)) if p["partNumber"].as_u64() == Some(n) && p["etag"] == etag.as_str() => {
                bytes.extend_from_slice(b)
            }
            _ => {
                return Resp::error(
                    400,
                    &format!("part {n}: not uploaded, or listed out of order or with another etag: {p}"),
                )
            }
        }
    }
    st.multipart.remove(oid);
    store(st, oid, bytes)
}
