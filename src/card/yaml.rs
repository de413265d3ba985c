//! The model card's YAML front matter, emitted from a `serde_json::Value` as a small, safe
//! subset of YAML: block mappings and sequences, every string double-quoted (JSON's escapes are
//! YAML's), floats always with a dot and a signed exponent. Every YAML reader then reads the
//! same values back — PyYAML (YAML 1.1, what `huggingface_hub.ModelCard` uses) included, which
//! would read a bare `1e-5` as a string and `no` / `on` / `null` as other types. No YAML crate
//! is needed for this (serde_yaml is unmaintained; its forks add an unsafe C-port emitter).

use serde_json::Value;

/// `value` (a JSON object) as YAML block lines, ending in a newline.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    emit(value, 0, &mut out);
    out
}

fn emit(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                out.push_str(&format!("{pad}{}:", key(k)));
                block_or_scalar(v, indent + 2, out);
            }
        }
        Value::Array(items) => {
            for v in items {
                out.push_str(&format!("{pad}-"));
                match v {
                    // A mapping in a sequence: its first key on the dash's line.
                    Value::Object(m) if !m.is_empty() => {
                        let mut inner = String::new();
                        emit(v, indent + 2, &mut inner);
                        out.push(' ');
                        out.push_str(&inner[indent + 2..]);
                    }
                    _ => block_or_scalar(v, indent + 2, out),
                }
            }
        }
        scalar_value => out.push_str(&format!("{pad}{}\n", scalar(scalar_value))),
    }
}

/// After `key:` or `-`: a non-empty collection on the next lines, else the scalar (or `{}` /
/// `[]`) on this one.
fn block_or_scalar(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            emit(v, indent, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            emit(v, indent, out);
        }
        Value::Object(_) => out.push_str(" {}\n"),
        Value::Array(_) => out.push_str(" []\n"),
        s => out.push_str(&format!(" {}\n", scalar(s))),
    }
}

/// A mapping key: plain when it is a simple identifier (`model-index`, `library_name`), else
/// quoted.
fn key(k: &str) -> String {
    let plain = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !matches!(k.to_ascii_lowercase().as_str(), "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null");
    if plain {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) if n.is_f64() => float(n.as_f64().unwrap_or(f64::NAN)),
        Value::Number(n) => n.to_string(),
        Value::String(_) => v.to_string(),
        Value::Array(_) | Value::Object(_) => unreachable!("collections are emitted as blocks"),
    }
}

/// A float that YAML 1.1 and 1.2 both read as this float: `0.001`, `1.0e-05`, `3.0`.
fn float(x: f64) -> String {
    if x.is_nan() {
        return ".nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { ".inf".into() } else { "-.inf".into() };
    }
    let s = serde_json::Number::from_f64(x).map_or_else(|| x.to_string(), |n| n.to_string());
    let (mantissa, exp) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m.to_string(), Some(e.to_string())),
        None => (s.clone(), None),
    };
    let mantissa = if mantissa.contains('.') { mantissa } else { format!("{mantissa}.0") };
    match exp {
        None => mantissa,
        Some(e) if e.starts_with(['-', '+']) => format!("{mantissa}e{e}"),
        Some(e) => format!("{mantissa}e+{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_maps_and_lists_as_block_yaml() {
        let v = json!({
            "library_name": "peft",
            "tags": ["rankforge", "lora"],
            "empty": [],
            "model-index": [{"name": "run", "results": [{"task": {"type": "text-generation"}, "metrics": [{"type": "loss", "value": 0.5}]}]}],
        });
        // serde_json's maps are sorted by key (no `preserve_order`).
        let want = "empty: []\nlibrary_name: \"peft\"\nmodel-index:\n  - name: \"run\"\n    results:\n      \
                    - metrics:\n          - type: \"loss\"\n            value: 0.5\n        task:\n          type: \"text-generation\"\n\
                    tags:\n  - \"rankforge\"\n  - \"lora\"\n";
        assert_eq!(to_yaml(&v), want);
    }

    #[test]
    fn floats_keep_a_dot_and_a_signed_exponent_and_odd_keys_are_quoted() {
        for x in [1e-5, 5e-5, 0.0001, 3.0, 1e21, -2.5e-7, 1e-300, 123456.789] {
            let s = float(x);
            assert_eq!(s.parse::<f64>().unwrap(), x, "{s} reads back as {x}");
            assert!(s.contains('.'), "{s}: PyYAML needs a dot");
            if let Some((_, e)) = s.split_once('e') {
                assert!(e.starts_with(['-', '+']), "{s}: PyYAML needs a signed exponent");
            }
        }
        assert_eq!((float(3.0).as_str(), float(1e21).as_str(), float(f64::NAN).as_str()), ("3.0", "1.0e+21", ".nan"));
        assert_eq!(scalar(&json!(16)), "16");
        assert_eq!(scalar(&json!("no: #1 'x' \"y\"\n")), r#""no: #1 'x' \"y\"\n""#);
        assert_eq!(key("rewards/accuracies"), "\"rewards/accuracies\"");
        assert_eq!(key("yes"), "\"yes\"");
        assert_eq!(key("base_model"), "base_model");
    }
}
