//! `--grid KEY=V1,V2,...`: one axis of a sweep. Each value is parsed as a TOML value the way
//! `--set` parses one (a bare word that is not TOML is a string) and keeps the type it is
//! written with (`1` an integer, `1.0` a float), which is how a name template prints it. The
//! trials are the Cartesian product of the axes in the order the flags were given, the last
//! axis varying fastest (Python's `itertools.product`).

use crate::error::{Error, Result};

/// One grid value: the text as given (the trial's `--set KEY=TEXT`) and its TOML value.
#[derive(Debug, Clone, PartialEq)]
pub struct GridValue {
    pub text: String,
    pub value: toml::Value,
}

/// One `--grid` flag.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<GridValue>,
}

/// Keys no grid may vary: the job's device and precision are chosen once for the whole sweep
/// (the ranks' collective depends on them), and each trial's `run.dir` is `<run.dir>/<name>`.
const FIXED: [(&str, &str); 3] = [
    ("run.dir", "each trial runs in <run.dir>/<name>; set the sweep's run.dir with --set run.dir=..."),
    ("train.device", "the job's device is chosen once for the whole sweep; set it with --set train.device=..."),
    ("train.precision", "the job's precision is chosen once for the whole sweep; set it with --set train.precision=..."),
];

/// Parses one `--grid KEY=V1,V2,...` flag.
pub fn parse_axis(flag: &str) -> Result<Axis> {
    let bad = |why: &str| Error::Input(format!("--grid {flag}: {why}"));
    let Some((key, list)) = flag.split_once('=') else {
        return Err(bad("expected KEY=V1,V2,... (e.g. --grid train.lr=1e-4,5e-5)"));
    };
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|p| p.trim().is_empty() || p.trim() != p) {
        return Err(bad("expected KEY=V1,V2,... with a dotted recipe key such as train.lr"));
    }
    if let Some((_, why)) = FIXED.iter().find(|(k, _)| *k == key) {
        return Err(bad(&format!("{key} cannot vary in a sweep: {why}")));
    }
    if list.trim().is_empty() {
        return Err(bad(&format!("no values for {key}: give one or more, comma-separated")));
    }
    let items = split_items(list).map_err(|why| bad(&why))?;
    let mut values = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let text = item.trim();
        if text.is_empty() {
            return Err(bad(&format!("value {} of {} is empty", i + 1, items.len())));
        }
        values.push(GridValue { text: text.to_string(), value: parse_value(text) });
    }
    Ok(Axis { key: key.to_string(), values })
}

/// A value as `--set` reads it: TOML, else the text as a string.
pub fn parse_value(text: &str) -> toml::Value {
    match format!("v = {text}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("the table has the key we just wrote"),
        Err(_) => toml::Value::String(text.to_string()),
    }
}

/// Splits `list` at the commas that are not inside a TOML string, array or inline table.
fn split_items(list: &str) -> std::result::Result<Vec<String>, String> {
    let (mut items, mut cur, mut depth, mut quote, mut escaped) = (Vec::new(), String::new(), 0i32, None::<char>, false);
    for c in list.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '[' | '{' => depth += 1,
                ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            },
        }
        cur.push(c);
    }
    if quote.is_some() {
        return Err("a quoted value is not closed".into());
    }
    if depth != 0 {
        return Err("unbalanced brackets".into());
    }
    items.push(cur);
    Ok(items)
}

/// The trials: for each, the index of its value on every axis, in `itertools.product` order.
pub fn product(axes: &[Axis]) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new()];
    for axis in axes {
        out = out.into_iter().flat_map(|prefix| (0..axis.values.len()).map(move |i| [prefix.clone(), vec![i]].concat())).collect();
    }
    out
}

/// Parses every `--grid` flag; a key given twice, or also in `--set`, is refused.
pub fn parse_axes(flags: &[String], set: &[String]) -> Result<Vec<Axis>> {
    if flags.is_empty() {
        return Err(Error::Input("sweep needs at least one --grid KEY=V1,V2,...".into()));
    }
    let axes = flags.iter().map(|f| parse_axis(f)).collect::<Result<Vec<_>>>()?;
    for (i, a) in axes.iter().enumerate() {
        if axes[..i].iter().any(|b| b.key == a.key) {
            return Err(Error::Input(format!("--grid {}: the key is given twice; give all its values in one --grid {}=V1,V2,...", a.key, a.key)));
        }
        if let Some(s) = set.iter().find(|s| s.split_once('=').is_some_and(|(k, _)| k.trim() == a.key)) {
            return Err(Error::Input(format!("--set {s}: {} is also a --grid key; drop one of the two", a.key)));
        }
    }
    Ok(axes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(flag: &str) -> Vec<toml::Value> {
        parse_axis(flag).unwrap().values.into_iter().map(|v| v.value).collect()
    }

    #[test]
    fn values_keep_the_type_they_are_written_with() {
        use toml::Value::*;
        assert_eq!(values("train.lr=5e-5,1,1.0,0.0001"), [Float(5e-5), Integer(1), Float(1.0), Float(1e-4)]);
        assert_eq!(values("data.x=true, abc ,\"a,b\",[1, 2]"), [Boolean(true), String("abc".into()), String("a,b".into()), Array(vec![Integer(1), Integer(2)])]);
        assert_eq!(parse_axis("train.lr= 1e-4 , 5e-5").unwrap().values[1].text, "5e-5", "items are trimmed");
    }

    #[test]
    fn malformed_flags_are_refused_with_the_reason() {
        for (flag, why) in [
            ("train.lr", "expected KEY=V1,V2,..."),
            ("=1,2", "with a dotted recipe key"),
            ("train..lr=1", "with a dotted recipe key"),
            ("train.lr=", "no values for train.lr"),
            ("train.lr=  ", "no values for train.lr"),
            ("train.lr=1,,2", "value 2 of 3 is empty"),
            ("train.lr=1,", "value 2 of 2 is empty"),
            ("train.lr=\"a", "a quoted value is not closed"),
            ("train.lr=[1,2", "unbalanced brackets"),
            ("run.dir=a,b", "run.dir cannot vary in a sweep"),
            ("train.device=cpu", "train.device cannot vary"),
        ] {
            let err = parse_axis(flag).unwrap_err().to_string();
            assert!(err.starts_with(&format!("--grid {flag}: ")) && err.contains(why), "{flag}: {err}");
        }
        let err = parse_axes(&["train.lr=1".into(), "train.lr=2".into()], &[]).unwrap_err().to_string();
        assert!(err.contains("the key is given twice"), "{err}");
        let err = parse_axes(&["train.lr=1".into()], &["train.lr=3".into()]).unwrap_err().to_string();
        assert!(err.contains("--set train.lr=3: train.lr is also a --grid key"), "{err}");
        assert!(parse_axes(&[], &[]).unwrap_err().to_string().contains("at least one --grid"));
    }

    #[test]
    fn the_product_varies_the_last_axis_fastest() {
        let axes = vec![parse_axis("a.x=1,2").unwrap(), parse_axis("a.y=3,4,5").unwrap()];
        assert_eq!(product(&axes), [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]);
        assert_eq!(product(&axes[..1]), [[0], [1]]);
    }
}
