//! Name templates: `dpo_model_lr{lr}_bs{bs}_epoch{epoch}` → `dpo_model_lr5e-05_bs16_epoch1`.
//!
//! A placeholder is any recipe key (`{train.lr}`), its last component when no other recipe key
//! ends the same way (`{lr}`), one of the aliases `{bs}` (`train.global_batch_size`),
//! `{epoch}` / `{epochs}` (`train.epochs`), or `{name}` (the trial's name, for templates
//! rendered after it, such as a Hub repository). `{{` and `}}` are literal braces. Values are
//! printed as Python's `str()` prints them, so names equal the ones a Python script builds with
//! an f-string: integers as integers, floats as `repr(float)` (shortest round-trip digits,
//! exponent form below 1e-4 and from 1e16, `5e-05`, `1.0`), strings as they are, booleans
//! `True` / `False`. A grid value keeps the type it was written with (`--grid train.epochs=1`
//! prints `1`, where the recipe's own float would print `1.0`).

use std::collections::BTreeMap;

use crate::config::Recipe;

/// Aliases: placeholder → recipe key.
pub const ALIASES: [(&str, &str); 3] = [("bs", "train.global_batch_size"), ("epoch", "train.epochs"), ("epochs", "train.epochs")];

/// What a template can name: the recipe's keys (dotted) with their values, and the trial's name.
#[derive(Debug, Clone)]
pub struct Scope {
    keys: BTreeMap<String, toml::Value>,
    name: Option<String>,
}

impl Scope {
    /// The keys of `recipe` (resolved: defaults filled in), with `values` (a trial's grid values,
    /// as written) in place of the recipe's own.
    pub fn new(recipe: &Recipe, values: &[(String, toml::Value)]) -> Scope {
        let table: toml::Table = recipe.to_toml().parse().expect("our own TOML parses");
        let mut keys = BTreeMap::new();
        flatten("", &table, &mut keys);
        for (k, v) in values {
            keys.insert(k.clone(), v.clone());
        }
        Scope { keys, name: None }
    }

    /// The same scope where `{name}` is `name`.
    pub fn with_name(mut self, name: &str) -> Scope {
        self.name = Some(name.to_string());
        self
    }

    /// The recipe key a placeholder names.
    fn resolve(&self, p: &str) -> Result<String, String> {
        if self.keys.contains_key(p) {
            return Ok(p.to_string());
        }
        if let Some((_, key)) = ALIASES.iter().find(|(a, _)| *a == p) {
            return match self.keys.contains_key(*key) {
                true => Ok(key.to_string()),
                false => Err(format!("{{{p}}} stands for {key}, which this recipe does not set")),
            };
        }
        let ends: Vec<&String> = self.keys.keys().filter(|k| k.rsplit('.').next() == Some(p)).collect();
        match ends.as_slice() {
            [one] => Ok(one.to_string()),
            [] => Err(format!(
                "{{{p}}} is not a recipe key: give a dotted key such as {{train.lr}}, the last part of one ({{lr}}), or {{bs}}, {{epoch}}, {{name}}"
            )),
            many => {
                let names: Vec<String> = many.iter().map(|k| format!("{{{k}}}")).collect();
                Err(format!("{{{p}}} is ambiguous: it could be {}; write the full key", names.join(" or ")))
            }
        }
    }

    /// Whether `{p}` names exactly one key.
    pub fn names_one(&self, p: &str) -> bool {
        self.resolve(p).is_ok()
    }
}

/// `prefix.key` for every non-table value under `t`.
fn flatten(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (k, v) in t {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(sub) => flatten(&key, sub, out),
            v => {
                out.insert(key, v.clone());
            }
        }
    }
}

/// Renders `template` in `scope`; the error says which placeholder is wrong and why.
pub fn render(template: &str, scope: &Scope) -> Result<String, String> {
    let (mut out, mut pos) = (String::new(), 0);
    while let Some(i) = template[pos..].find(['{', '}']) {
        let at = pos + i;
        out.push_str(&template[pos..at]);
        let (c, after) = (&template[at..at + 1], &template[at + 1..]);
        if after.starts_with(c) {
            out.push_str(c); // `{{` or `}}`
            pos = at + 2;
            continue;
        }
        if c == "}" {
            return Err(format!("a single '}}' at position {at} (write '}}}}' for a literal brace)"));
        }
        let end = after.find('}').filter(|&e| !after[..e].contains('{'));
        let Some(end) = end else {
            return Err(format!("the '{{' at position {at} is never closed (write '{{{{' for a literal brace)"));
        };
        let p = after[..end].trim();
        if p.is_empty() {
            return Err(format!("the '{{}}' at position {at} holds no key"));
        }
        if p == "name" {
            out.push_str(scope.name.as_deref().ok_or("{name} is the trial's name, which this template defines")?);
        } else {
            out.push_str(&python_str(&scope.keys[&scope.resolve(p)?]));
        }
        pos = at + 1 + end + 1;
    }
    out.push_str(&template[pos..]);
    Ok(out)
}

/// The default name of a sweep's trials: each grid key's placeholder after a label, joined by
/// `_`: `lr{lr}_bs{bs}` for `train.lr` × `train.global_batch_size`, `epoch{epoch}` for
/// `train.epochs`. The label is the key's last part (the whole key when two grid keys share
/// it); the placeholder the shortest form that names the key unambiguously.
pub fn default_template(grid_keys: &[String], scope: &Scope) -> String {
    let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    let parts: Vec<String> = grid_keys
        .iter()
        .map(|k| {
            if let Some((alias, _)) = ALIASES.iter().find(|(_, key)| key == k) {
                return format!("{alias}{{{alias}}}");
            }
            let l = last(k);
            let shared = grid_keys.iter().filter(|o| last(o) == l).count() > 1;
            let label = if shared { k.clone() } else { l.clone() };
            let placeholder = if scope.names_one(&l) && !shared { l } else { k.clone() };
            format!("{label}{{{placeholder}}}")
        })
        .collect();
    parts.join("_")
}

/// `str(v)` in Python for the value TOML's `v` would load as.
pub fn python_str(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        v => python_repr(v),
    }
}

/// `repr(v)` in Python.
fn python_repr(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => python_str_repr(s),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => python_float(*f),
        toml::Value::Boolean(b) => if *b { "True" } else { "False" }.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(a) => format!("[{}]", a.iter().map(python_repr).collect::<Vec<_>>().join(", ")),
        toml::Value::Table(t) => {
            let items: Vec<String> = t.iter().map(|(k, v)| format!("{}: {}", python_str_repr(k), python_repr(v))).collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

/// `repr(s)` of a Python string: single quotes unless the text holds one and no double quote.
fn python_str_repr(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::from(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

/// `repr(x)` (= `str(x)`) of a Python float: the shortest digits that read back as `x`, in
/// positional form for decimal exponents -4 ..= 15 (`0.0001`, `1.0`, `1000000000000000.0`),
/// else as `d.ddde±XX` with at least two exponent digits (`5e-05`, `1e+16`).
pub fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if x == 0.0 {
        return format!("{sign}0.0");
    }
    // Rust's `{:e}` prints the shortest digits that round-trip, as `d.ddde<exp>`; where two
    // such strings are equally close to `x` (its exact value ends in 5 just past them) it takes
    // the upper one, Python the even one. The exactly rounded string of as many digits (half to
    // even) is Python's whenever it reads back as `x`.
    let shortest = format!("{:e}", x.abs());
    let n = shortest.split('e').next().map_or(1, |m| m.chars().filter(|c| c.is_ascii_digit()).count());
    let exact = format!("{:.*e}", n - 1, x.abs());
    let e = if exact.parse::<f64>() == Ok(x.abs()) { exact } else { shortest };
    let (mantissa, exp) = e.split_once('e').expect("LowerExp has an exponent");
    let exp: i32 = exp.parse().expect("LowerExp's exponent is an integer");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let body = if !(-4..16).contains(&exp) {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    } else if exp < 0 {
        format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            format!("{digits}{}.0", "0".repeat(int_len - digits.len()))
        } else {
            format!("{}.{}", &digits[..int_len], &digits[int_len..])
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `str(x)` from CPython 3.11 (`python3 -c 'print(str(x))'`) for each value.
    #[test]
    fn floats_print_as_python_prints_them() {
        let table: [(f64, &str); 25] = [
            (5e-5, "5e-05"),
            (1e-4, "0.0001"),
            (0.0001234, "0.0001234"),
            (0.00001234, "1.234e-05"),
            (3e-3, "0.003"),
            (1.0, "1.0"),
            (16.0, "16.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345.6, "123456789012345.6"),
            (9999999999999998.0, "9999999999999998.0"),
            (1e22, "1e+22"),
            (1e30, "1e+30"),
            (1e-100, "1e-100"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (2.5, "2.5"),
            // A tie: the exact value is 667082108456853.25; .2 and .3 both read back, Python
            // takes the even one.
            (f64::from_bits(0x4302f5a940e27caa), "667082108456853.2"),
            (-0.0, "-0.0"),
            (-2e-5, "-2e-05"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
        ];
        for (x, want) in table {
            assert_eq!(python_float(x), want, "{x:e}");
        }
    }

    #[test]
    fn other_values_print_as_python_str() {
        use toml::Value::*;
        assert_eq!(python_str(&Integer(16)), "16");
        assert_eq!(python_str(&Integer(-3)), "-3");
        assert_eq!(python_str(&Boolean(true)), "True");
        assert_eq!(python_str(&Boolean(false)), "False");
        assert_eq!(python_str(&String("sigmoid".into())), "sigmoid");
        assert_eq!(python_str(&Array(vec![String("q_proj".into()), String("it's".into()), Float(1.0), Integer(2)])), "['q_proj', \"it's\", 1.0, 2]");
    }

    fn scope() -> Scope {
        let mut keys = BTreeMap::new();
        for (k, v) in [
            ("train.lr", toml::Value::Float(5e-5)),
            ("train.global_batch_size", toml::Value::Integer(16)),
            ("train.seed", toml::Value::Integer(1)),
            ("data.seed", toml::Value::Integer(2)),
            ("run.dir", toml::Value::String("runs/x".into())),
        ] {
            keys.insert(k.to_string(), v);
        }
        Scope { keys, name: None }
    }

    #[test]
    fn templates_render_keys_last_parts_and_aliases() {
        let mut s = scope();
        s.keys.insert("train.epochs".into(), toml::Value::Integer(1));
        assert_eq!(render("dpo_model_lr{lr}_bs{bs}_epoch{epoch}", &s).unwrap(), "dpo_model_lr5e-05_bs16_epoch1");
        assert_eq!(render("{train.lr}-{epochs}-{{x}}", &s).unwrap(), "5e-05-1-{x}");
        assert_eq!(render("user/{name}", &s.clone().with_name("lr5e-05")).unwrap(), "user/lr5e-05");
        assert_eq!(render("no placeholders", &s).unwrap(), "no placeholders");
    }

    #[test]
    fn bad_templates_name_the_placeholder() {
        let s = scope();
        for (t, why) in [
            ("lr{lrr}", "{lrr} is not a recipe key"),
            ("x{seed}", "{seed} is ambiguous: it could be {data.seed} or {train.seed}"),
            ("e{epoch}", "{epoch} stands for train.epochs, which this recipe does not set"),
            ("lr{lr", "the '{' at position 2 is never closed"),
            ("lr}", "a single '}' at position 2"),
            ("a{}", "holds no key"),
            ("{name}", "{name} is the trial's name"),
        ] {
            let err = render(t, &s).unwrap_err();
            assert!(err.contains(why), "{t}: {err}");
        }
    }

    #[test]
    fn the_default_template_labels_each_grid_key() {
        let s = scope();
        let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        assert_eq!(default_template(&keys(&["train.lr", "train.global_batch_size"]), &s), "lr{lr}_bs{bs}");
        assert_eq!(default_template(&keys(&["train.epochs"]), &s), "epoch{epoch}");
        assert_eq!(default_template(&keys(&["train.seed"]), &s), "seed{train.seed}", "{{seed}} is ambiguous in the recipe");
        assert_eq!(default_template(&keys(&["a.dropout", "b.dropout"]), &s), "a.dropout{a.dropout}_b.dropout{b.dropout}");
    }
}
