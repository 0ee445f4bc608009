//! Every setting of the TOML file can also be given without a file, so a container is
//! configured by its environment alone:
//!
//! - `ENGINE_GATEWAY_<SECTION>__<KEY>=value` (two underscores between levels), e.g.
//!   `ENGINE_GATEWAY_LIMITS__MAX_CONNECTIONS=2048`, `ENGINE_GATEWAY_MEMORY__LADDER=[0.6,0.9]`;
//! - `serve --set section.key=value`, repeatable, e.g. `--set limits.body_timeout_secs=10`.
//!
//! A value is read as a TOML value when it is one (`2048`, `0.8`, `true`, `[0.6, 0.9]`,
//! `"text"`), else as a string (`64MiB`, `/etc/engine-gateway/jwt.pub.pem`). The overlay goes
//! onto the file's table before it is checked, so a misspelt key is refused exactly as in the
//! file. Precedence: defaults < file < environment < `--set` < the dedicated flags
//! (`--listen`, `--max-connections`, …) and their variables.

use anyhow::{Context, bail};
use toml::{Table, Value};

/// Prefix of the variables that name a file setting.
pub const ENV_PREFIX: &str = "ENGINE_GATEWAY_";
/// Separator between levels in a variable's name.
const ENV_SEPARATOR: &str = "__";

/// One setting from outside the file, and where it came from (for error messages).
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    /// Path in the file's tree, e.g. `["limits", "max_connections"]`.
    pub path: Vec<String>,
    pub value: Value,
    /// `ENGINE_GATEWAY_LIMITS__MAX_CONNECTIONS` or `--set limits.max_connections=…`.
    pub origin: String,
}

/// The settings in `vars` (e.g. `std::env::vars()`): names with a section, so the variables of
/// the dedicated flags (`ENGINE_GATEWAY_LISTEN`) and others (`ENGINE_GATEWAY_LOG`) are not
/// taken for file settings.
pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Setting> {
    let mut settings: Vec<Setting> = vars
        .into_iter()
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix(ENV_PREFIX)?;
            if !rest.contains(ENV_SEPARATOR) {
                return None;
            }
            let path = rest
                .split(ENV_SEPARATOR)
                .map(str::to_ascii_lowercase)
                .collect();
            Some(Setting {
                path,
                value: parse_value(&value),
                origin: name,
            })
        })
        .collect();
    // Variables come in no particular order; apply them in a stable one.
    settings.sort_by(|a, b| a.origin.cmp(&b.origin));
    settings
}

/// `--set section.key=value`.
pub fn from_flag(text: &str) -> Result<Setting, String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("--set {text:?}: expected section.key=value"))?;
    let path: Vec<String> = key.trim().split('.').map(str::to_owned).collect();
    if path.iter().any(String::is_empty) {
        return Err(format!("--set {text:?}: expected section.key=value"));
    }
    Ok(Setting {
        path,
        value: parse_value(value.trim()),
        origin: format!("--set {key}"),
    })
}

/// Puts `settings` onto `table`, later ones over earlier ones.
pub fn apply(table: &mut Table, settings: &[Setting]) -> anyhow::Result<()> {
    for setting in settings {
        let (last, parents) = setting
            .path
            .split_last()
            .with_context(|| format!("{}: empty setting name", setting.origin))?;
        let mut node = &mut *table;
        for (depth, part) in parents.iter().enumerate() {
            let entry = node
                .entry(part.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            let Value::Table(child) = entry else {
                bail!(
                    "{}: {} is a value, not a section",
                    setting.origin,
                    setting.path[..=depth].join(".")
                );
            };
            node = child;
        }
        node.insert(last.clone(), setting.value.clone());
    }
    Ok(())
}

/// A TOML value when the text is one, else the text as a string.
fn parse_value(text: &str) -> Value {
    let document = format!("v = {text}");
    match document.parse::<Table>() {
        Ok(mut table) => table
            .remove("v")
            .unwrap_or_else(|| Value::String(text.to_owned())),
        Err(_) => Value::String(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn variables_with_a_section_become_settings() {
        let settings = from_env(vars(&[
            ("ENGINE_GATEWAY_LISTEN", "0.0.0.0:1"),
            ("ENGINE_GATEWAY_LOG", "debug"),
            ("ENGINE_GATEWAY_LIMITS__MAX_CONNECTIONS", "2048"),
            ("ENGINE_GATEWAY_MEMORY__LADDER", "[0.6, 0.9]"),
            ("ENGINE_GATEWAY_JWT__PUBLIC_KEY", "/etc/jwt.pem"),
            ("ENGINE_GATEWAY_LIMITS__INFLIGHT_BYTES", "32MiB"),
            ("HOME", "/root"),
        ]));
        let mut table = Table::new();
        apply(&mut table, &settings).unwrap();
        assert_eq!(table.len(), 3, "{table:?}");
        assert_eq!(table["limits"]["max_connections"], Value::Integer(2048));
        assert_eq!(
            table["limits"]["inflight_bytes"],
            Value::String("32MiB".into())
        );
        assert_eq!(
            table["memory"]["ladder"],
            Value::Array(vec![Value::Float(0.6), Value::Float(0.9)])
        );
        assert_eq!(
            table["jwt"]["public_key"],
            Value::String("/etc/jwt.pem".into())
        );
    }

    #[test]
    fn flags_and_their_errors() {
        let setting = from_flag("limits.body_timeout_secs = 10").unwrap();
        assert_eq!(setting.path, ["limits", "body_timeout_secs"]);
        assert_eq!(setting.value, Value::Integer(10));
        assert!(from_flag("limits.body_timeout_secs").is_err());
        assert!(from_flag("limits..x=1").is_err());

        let mut table: Table = "limits = 3".parse().unwrap();
        let err = apply(
            &mut table,
            &[from_flag("limits.max_connections=1").unwrap()],
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a section"), "{err}");
    }
}
