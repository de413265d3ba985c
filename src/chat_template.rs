//! Chat templates: the Jinja program in a model's `chat_template.jinja` (or
//! `tokenizer_config.json["chat_template"]`) that turns a conversation into the model's prompt
//! text. Rendered with `minijinja`, set up like transformers' `apply_chat_template` so that the
//! same template gives the same text:
//!
//! - `trim_blocks` and `lstrip_blocks` on, loop controls (`break`/`continue`), Python string and
//!   dict methods (`.strip()`, `.startswith()`, `.items()`, … through `minijinja-contrib`'s
//!   pycompat);
//! - context: `messages`, `add_generation_prompt`, `tools` and `documents` (both `none`), and the
//!   tokenizer's special tokens (`bos_token`, `eos_token`, …);
//! - `raise_exception(msg)`, `strftime_now(fmt)` (UTC) and a `tojson` filter that writes like
//!   Python's `json.dumps` (`", "` / `": "` separators, non-ASCII kept, `indent=`,
//!   `separators=`); mapping keys come out sorted (our JSON maps are sorted), where Python keeps
//!   insertion order;
//! - `{% generation %}…{% endgeneration %}` (transformers' assistant-mask tag) is accepted, and
//!   [`ChatTemplate::render_tracked`] reports the byte spans it wrapped.
//!
//! The supervised fine-tuning data step ([`crate::sft`]) uses it for `messages` data.

use std::ops::Range;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

/// One turn of a conversation, as in Hugging Face's `[{"role": ..., "content": ...}]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Marks the start and end of `{% generation %}` output while tracking; Unicode noncharacters,
/// which text data does not contain.
const GEN_START: char = '\u{10FFFE}';
const GEN_END: char = '\u{10FFFF}';

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The template uses `{% generation %}` blocks.
    pub has_generation: bool,
    /// The template's text as read (written back by `save_pretrained`).
    pub source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("has_generation", &self.has_generation).finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; the error is minijinja's message (syntax error with its line).
    pub fn new(source: &str) -> Result<ChatTemplate, String> {
        let (rewritten, has_generation) = rewrite_generation_tags(source);
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| format!("{e:#}"))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| strftime_utc(&fmt, now_unix()));
        env.add_filter("tojson", tojson);
        env.add_filter("__rf_generation", |state: &minijinja::State, s: String| {
            if state.lookup("__rf_track").is_some_and(|v| v.is_true()) {
                format!("{GEN_START}{s}{GEN_END}")
            } else {
                s
            }
        });
        env.add_template_owned("chat_template", rewritten).map_err(|e| format!("{e:#}"))?;
        Ok(ChatTemplate { env, has_generation, source: source.to_string() })
    }

    /// Renders `messages` (JSON objects with at least `role` and `content`). `specials` are the
    /// tokenizer's special tokens by name (`bos_token` → `<s>`).
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
        specials: &[(&str, &str)],
    ) -> Result<String, String> {
        self.render_inner(messages, add_generation_prompt, specials, false).map(|(s, _)| s)
    }

    /// As [`ChatTemplate::render`], plus the byte ranges of the text that `{% generation %}`
    /// blocks produced (transformers' `return_assistant_tokens_mask`).
    pub fn render_tracked(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
        specials: &[(&str, &str)],
    ) -> Result<(String, Vec<Range<usize>>), String> {
        self.render_inner(messages, add_generation_prompt, specials, true)
    }

    fn render_inner(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
        specials: &[(&str, &str)],
        track: bool,
    ) -> Result<(String, Vec<Range<usize>>), String> {
        let tmpl = self.env.get_template("chat_template").map_err(|e| format!("{e:#}"))?;
        let mut ctx: std::collections::BTreeMap<String, Value> = specials
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        // transformers 5 drops keys whose value is None (`content: null` of tool calls) first.
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| match m {
                serde_json::Value::Object(o) => Value::from(
                    o.iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| (k.clone(), json_to_value(v)))
                        .collect::<std::collections::BTreeMap<_, _>>(),
                ),
                other => json_to_value(other),
            })
            .collect();
        ctx.insert("messages".into(), Value::from(messages));
        ctx.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        ctx.insert("__rf_track".into(), Value::from(track));
        let out = tmpl.render(Value::from(ctx)).map_err(|e| render_error(&e))?;
        if !track {
            return Ok((out, Vec::new()));
        }
        Ok(strip_generation_marks(&out))
    }
}

fn render_error(e: &minijinja::Error) -> String {
    match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(d)) => format!("raise_exception: {d} (template line {})", e.line().unwrap_or(0)),
        _ => format!("{e:#}"),
    }
}

/// Removes the tracking marks, returning the clean text and the spans they enclosed.
fn strip_generation_marks(marked: &str) -> (String, Vec<Range<usize>>) {
    let mut out = String::with_capacity(marked.len());
    let mut spans = Vec::new();
    let mut open = Vec::new();
    for c in marked.chars() {
        match c {
            GEN_START => open.push(out.len()),
            GEN_END => {
                if let Some(start) = open.pop() {
                    // Nested blocks: transformers records each; the outer one covers the inner.
                    spans.push(start..out.len());
                }
            }
            _ => out.push(c),
        }
    }
    spans.sort_by_key(|r| r.start);
    (out, spans)
}

/// `{%- generation -%}` → `{%- filter __rf_generation -%}` and `endgeneration` → `endfilter`,
/// keeping whitespace control, so the blocks trim exactly as transformers' extension tag does.
fn rewrite_generation_tags(source: &str) -> (String, bool) {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    let mut found = false;
    while let Some(pos) = rest.find("{%") {
        out.push_str(&rest[..pos]);
        let tag = &rest[pos + 2..];
        let (marker, body) = match tag.chars().next() {
            Some(c @ ('-' | '+')) => (c.to_string(), &tag[1..]),
            _ => (String::new(), tag),
        };
        let trimmed = body.trim_start();
        let word_end = trimmed.find(|c: char| !c.is_ascii_alphanumeric() && c != '_').unwrap_or(trimmed.len());
        let replacement = match &trimmed[..word_end] {
            "generation" => Some("filter __rf_generation"),
            "endgeneration" => Some("endfilter"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                found = true;
                out.push_str("{%");
                out.push_str(&marker);
                out.push(' ');
                out.push_str(r);
                rest = &trimmed[word_end..];
            }
            None => {
                out.push_str("{%");
                rest = tag;
            }
        }
    }
    out.push_str(rest);
    (out, found)
}

/// serde_json → minijinja, keeping integers integers (templates compare `loop.index0 % 2 == 0`).
pub fn json_to_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::from(i),
            (None, Some(u), _) => Value::from(u),
            (_, _, f) => Value::from(f.unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(a) => Value::from(a.iter().map(json_to_value).collect::<Vec<_>>()),
        serde_json::Value::Object(o) => Value::from(
            o.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect::<std::collections::BTreeMap<_, _>>(),
        ),
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`.
fn tojson(v: &Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let _sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let (item, key) = match separators.as_deref() {
        Some([i, k]) => (i.clone(), k.clone()),
        Some(_) => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings")),
        // Python: (', ', ': ') without indent, (',', ': ') with.
        None => (if indent.is_some() { ",".into() } else { ", ".into() }, ": ".into()),
    };
    let fmt = PyJson { indent, item, key, ascii: ensure_ascii.unwrap_or(false) };
    let mut out = String::new();
    fmt.write(v, 0, &mut out)?;
    Ok(Value::from(out))
}

struct PyJson {
    indent: Option<usize>,
    item: String,
    key: String,
    ascii: bool,
}

impl PyJson {
    fn write(&self, v: &Value, level: usize, out: &mut String) -> Result<(), minijinja::Error> {
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
            ValueKind::Number => {
                let f = f64::try_from(v.clone())?;
                out.push_str(&py_float(f));
            }
            ValueKind::String => self.string(v.as_str().unwrap_or_default(), out),
            ValueKind::Map => {
                let keys: Vec<Value> = v.try_iter()?.collect();
                self.container('{', '}', keys.len(), level, out, |i, out| {
                    self.string(&keys[i].to_string(), out);
                    out.push_str(&self.key);
                    self.write(&v.get_item(&keys[i])?, level + 1, out)
                })?;
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container('[', ']', items.len(), level, out, |i, out| self.write(&items[i], level + 1, out))?;
            }
            // Plain objects, bytes, and kinds added later: their text.
            _ => self.string(&v.to_string(), out),
        }
        Ok(())
    }

    fn container(
        &self,
        open: char,
        close: char,
        n: usize,
        level: usize,
        out: &mut String,
        mut each: impl FnMut(usize, &mut String) -> Result<(), minijinja::Error>,
    ) -> Result<(), minijinja::Error> {
        out.push(open);
        if n == 0 {
            out.push(close);
            return Ok(());
        }
        for i in 0..n {
            if i > 0 {
                out.push_str(&self.item);
            }
            if let Some(ind) = self.indent {
                out.push('\n');
                out.push_str(&" ".repeat(ind * (level + 1)));
            }
            each(i, out)?;
        }
        if let Some(ind) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(ind * level));
        }
        out.push(close);
        Ok(())
    }

    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ascii && (c as u32) > 0x7e) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Python's `repr(float)` for the common cases (`1.0`, `0.5`, `1e-05`).
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Python: 1e-05, 1e+16.
        let s = format!("{f:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        return format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    if f.fract() == 0.0 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

const MONTHS: [&str; 12] =
    ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// `datetime.now().strftime(fmt)` in UTC for the directives chat templates use
/// (`%d %b %Y`, …); an unknown directive is copied through.
pub fn strftime_utc(fmt: &str, unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let (month, day) = (MONTHS[(m - 1) as usize], DAYS[weekday]);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('a') => out.push_str(&day[..3]),
            Some('A') => out.push_str(day),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CHATML: &str = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'].strip() + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn chatml_and_python_methods() {
        let t = ChatTemplate::new(CHATML).unwrap();
        let msgs = [json!({"role": "user", "content": " hi "}), json!({"role": "assistant", "content": "yo"})];
        let s = t.render(&msgs, true, &[]).unwrap();
        assert_eq!(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn raise_exception_and_loop_controls() {
        let src = "{% for m in messages %}{% if m.role == 'x' %}{{ raise_exception('bad role ' + m.role) }}{% endif %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}";
        let t = ChatTemplate::new(src).unwrap();
        assert_eq!(t.render(&[json!({"role": "u", "content": "a"}), json!({"role": "u", "content": "b"})], false, &[]).unwrap(), "a");
        let e = t.render(&[json!({"role": "x", "content": "a"})], false, &[]).unwrap_err();
        assert!(e.contains("bad role x"), "{e}");
    }

    #[test]
    fn generation_blocks_are_tracked() {
        let src = "{% for m in messages %}{% if m.role == 'assistant' %}A: {% generation %}{{ m.content }}!{% endgeneration %}\n{% else %}U: {{ m.content }}\n{% endif %}{% endfor %}";
        let t = ChatTemplate::new(src).unwrap();
        assert!(t.has_generation);
        let msgs = [json!({"role": "user", "content": "q"}), json!({"role": "assistant", "content": "ans"})];
        let (s, spans) = t.render_tracked(&msgs, false, &[]).unwrap();
        // trim_blocks eats the newline after `{% endgeneration %}`, as in jinja2.
        assert_eq!(s, "U: q\nA: ans!");
        assert_eq!(spans, vec![8..12]);
        assert_eq!(t.render(&msgs, false, &[]).unwrap(), s);
    }

    #[test]
    fn tojson_like_python() {
        let t = ChatTemplate::new("{{ messages[0] | tojson }}|{{ messages[0].x | tojson(indent=2) }}").unwrap();
        let s = t.render(&[json!({"a": "é\"\n", "b": [1, 2.5, 3.0, null, true], "x": {"k": []}})], false, &[]).unwrap();
        assert_eq!(s, "{\"a\": \"é\\\"\\n\", \"b\": [1, 2.5, 3.0, null, true], \"x\": {\"k\": []}}|{\n  \"k\": []\n}");
    }

    #[test]
    fn strftime() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        assert_eq!(strftime_utc("%d %b %Y %A %H:%M:%S %B %%", 1_722_000_309), "26 Jul 2024 Friday 13:25:09 July %");
    }
}
