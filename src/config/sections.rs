//! Deserialising the sections whose keys depend on a kind (`[model]` by `model.kind`, `[task]`
//! by `task.kind`, `[data]` by the task): the kind picks one struct, serde checks its keys
//! (`deny_unknown_fields`), and a key that the picked struct does not have but another kind's
//! does gets a message naming that kind — no hand-kept key lists.

use serde::de::DeserializeOwned;

/// A recipe error before it gets its file: (dotted key, message).
pub(super) type KeyError = (String, String);

fn join(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}.{rest}"),
    }
}

/// Deserialises `value` as `T`. Errors carry the dotted key: `prefix` + serde's path, and for a
/// missing field the field itself (`model.path: missing field `path``).
pub(super) fn parse<T: DeserializeOwned>(value: toml::Value, prefix: &str) -> Result<T, KeyError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().message().trim().to_string();
        let mut key = join(prefix, if path == "." { "" } else { &path });
        if let Some(field) = msg.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
            key = join(&key, field);
        }
        (key, msg)
    })
}

/// Whether `T` has a key `field`: a table with only that key fails for other reasons (missing
/// fields, a wrong type) but not as an unknown field.
pub(super) fn has_key<T: DeserializeOwned>(field: &str, value: &toml::Value) -> bool {
    let mut t = toml::Table::new();
    t.insert(field.to_string(), value.clone());
    match parse::<T>(toml::Value::Table(t), "") {
        Ok(_) => true,
        Err((_, msg)) => !msg.starts_with("unknown field"),
    }
}

/// Another kind that could own a key: its description (`model.kind = "gpt"`) and its test.
pub(super) type Other = (&'static str, fn(&str, &toml::Value) -> bool);

/// Deserialises section `prefix` (`section`, without its `kind`) as `T`, the struct of
/// `current` (`model.kind = "hf"`). An unknown key that one of `others` has is reported as
/// belonging to it.
pub(super) fn variant<T: DeserializeOwned>(section: &toml::Table, prefix: &str, current: &str, others: &[Other]) -> Result<T, KeyError> {
    parse::<T>(toml::Value::Table(section.clone()), prefix).map_err(|(key, msg)| {
        let field = key.strip_prefix(prefix).and_then(|k| k.strip_prefix('.')).unwrap_or("");
        let owner = section.get(field).filter(|_| msg.starts_with("unknown field")).and_then(|v| others.iter().find(|(_, has)| has(field, v)));
        match owner {
            Some((desc, _)) => (key, format!("only for {desc}; this recipe has {current}")),
            None => (key, msg),
        }
    })
}

/// Takes `kind` out of `section`: its value as a string, or `default` when absent.
pub(super) fn take_kind(section: &mut toml::Table, prefix: &str, default: Option<&str>) -> Result<String, KeyError> {
    let key = format!("{prefix}.kind");
    match section.remove("kind") {
        Some(toml::Value::String(s)) => Ok(s),
        Some(other) => Err((key, format!("invalid type: {}, expected a string", other.type_str()))),
        None => default.map(str::to_string).ok_or((key, "missing field `kind`".to_string())),
    }
}

/// Takes section `name` out of the recipe's top-level table (`None` when absent).
pub(super) fn take_section(table: &mut toml::Table, name: &str) -> Result<Option<toml::Table>, KeyError> {
    match table.remove(name) {
        Some(toml::Value::Table(t)) => Ok(Some(t)),
        Some(other) => Err((name.to_string(), format!("invalid type: {}, expected a section", other.type_str()))),
        None => Ok(None),
    }
}
