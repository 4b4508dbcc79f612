//! Turning a broken file into one line per problem, each naming the key, the
//! value and what is expected:
//!
//! - the known keys of a section are read from its type ([`fields_of`]), so that
//!   a key is declared once, as a field;
//! - an unknown key gets the nearest known one as a suggestion;
//! - a section that does not deserialize is tried key by key to find which ones
//!   are at fault; the words of the complaint come from the key's own type (the
//!   `expect_*` deserializers below) or from the `config` crate's error variant,
//!   never from picking its message apart.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::tunnel::TunnelConfig;

/// The field names of a struct that derives `Deserialize` (after renames), as
/// serde hands them to a deserializer; empty for anything else.
pub(crate) fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(Names(&mut names));
    names
}

/// The variant names of an enum that derives `Deserialize` (after renames).
fn variants_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    fields_of::<T>()
}

/// A deserializer that records the names of the fields (of a struct) or the
/// variants (of an enum) it is asked for, then fails.
struct Names<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for Names<'_> {
    type Error = de::value::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("only the field names were wanted"))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = variants;
        Err(de::Error::custom("only the variant names were wanted"))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
        identifier ignored_any
    }
}

/// `deserialize_with` for addresses: says what an address looks like.
pub(crate) fn expect_ip<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    IpAddr::deserialize(d).map_err(|_| {
        de::Error::custom("expected an IP address such as \"127.0.0.1\" or \"0.0.0.0\"")
    })
}

/// `deserialize_with` for ports: says what a port is.
pub(crate) fn expect_port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    u16::deserialize(d).map_err(|_| de::Error::custom("expected a port number from 0 to 65535"))
}

/// `with` for durations: written as humantime strings ("5s", "1m 30s"); a value
/// that is not one says how one is written.
pub(crate) mod duration {
    use super::*;

    pub(crate) use humantime_serde::serialize;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        humantime_serde::deserialize(d).map_err(|_: D::Error| de::Error::custom(EXPECTED))
    }

    const EXPECTED: &str = "expected a duration such as \"5s\", \"500ms\" or \"1m 30s\"";

    /// The same, for an optional key.
    pub(crate) mod option {
        use super::*;

        pub(crate) use humantime_serde::option::serialize;

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            humantime_serde::option::deserialize(d)
                .map_err(|_: D::Error| de::Error::custom(EXPECTED))
        }
    }
}

/// `with` for sizes in bytes: written as `"32KiB"`, `"100MiB"`, `"1.5 MB"` or a
/// plain number of bytes; shown exactly (`"32KiB"`, or bytes when no binary unit
/// divides the value), so that `--check` output loads back to the same value.
pub(crate) mod size {
    use serde::Serializer;

    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        bytesize::ByteSize::deserialize(d)
            .map(|s| s.as_u64())
            .map_err(|_: D::Error| {
                de::Error::custom(
                    "expected a size such as \"32KiB\", \"100MiB\" or a number of bytes",
                )
            })
    }

    pub(crate) fn serialize<S: Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&show(*bytes))
    }

    /// `bytes` in the largest binary unit that divides it.
    pub(crate) fn show(bytes: u64) -> String {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        UNITS
            .iter()
            .find(|(unit, _)| bytes != 0 && bytes.is_multiple_of(*unit))
            .map_or_else(
                || bytes.to_string(),
                |(unit, name)| format!("{}{name}", bytes / unit),
            )
    }
}

/// `deserialize_with` for enums: lists the values there are.
pub(crate) fn expect_one_of<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map_err(|_| {
        de::Error::custom(format_args!(
            "expected one of {}",
            variants_of::<T>().join(", ")
        ))
    })
}

/// The complaint of a `config` error, from its variant.
pub(crate) fn describe(e: &config::ConfigError) -> String {
    match e {
        config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("expected {expected}, found {unexpected}"),
        config::ConfigError::At { error, .. } => describe(error),
        config::ConfigError::FileParse { cause, .. } => cause.to_string(),
        other => other.to_string(),
    }
}

/// The keys the `GATEWAY_*` environment set, with the variable that set each: a
/// problem with such a key blames the variable, not the file.
#[derive(Debug, Default)]
pub(crate) struct EnvKeys(BTreeMap<(String, String), String>);

impl EnvKeys {
    /// From the variables of the environment layer (`GATEWAY_SECTION__KEY`).
    pub(crate) fn new<'a>(
        names: impl Iterator<Item = &'a String>,
        prefix: &str,
        sep: &str,
    ) -> Self {
        let keys = names.filter_map(|name| {
            let (section, key) = name.strip_prefix(prefix)?.split_once(sep)?;
            Some(((section.to_lowercase(), key.to_lowercase()), name.clone()))
        });
        EnvKeys(keys.collect())
    }

    /// ` (set by GATEWAY_...)` when the environment set a key of `section`.
    pub(crate) fn blame_section(&self, section: &str) -> String {
        self.blame(section, None)
    }

    /// ` (set by GATEWAY_...)` when the environment set `section.key` (or, with
    /// no key, any key of `section`), else nothing.
    fn blame(&self, section: &str, key: Option<&str>) -> String {
        let var = self
            .0
            .iter()
            .find(|((s, k), _)| s == section && key.is_none_or(|key| k == key));
        var.map(|(_, var)| format!(" (set by {var})"))
            .unwrap_or_default()
    }
}

/// Deserializes section `name` of `map` (its defaults when absent), reporting
/// unknown and bad keys into `problems`.
pub(crate) fn section<T>(
    map: &BTreeMap<String, config::Value>,
    name: &str,
    env: &EnvKeys,
    problems: &mut Vec<String>,
) -> T
where
    T: Default + for<'de> Deserialize<'de>,
{
    let Some(value) = map.get(name) else {
        return T::default();
    };
    let Ok(table) = value.clone().into_table() else {
        problems.push(format!("{name} must be a table ([{name}])"));
        return T::default();
    };
    match table_of::<T>(name, value, &table, env) {
        Ok(v) => v,
        Err(found) => {
            problems.extend(found);
            T::default()
        }
    }
}

/// Deserializes the `[[tunnels]]` entries; an entry with a problem is left out
/// and its problems reported. Returns the entries and how many were refused.
pub(crate) fn tunnels(
    value: &config::Value,
    problems: &mut Vec<String>,
) -> (Vec<TunnelConfig>, usize) {
    let Ok(list) = value.clone().into_array() else {
        problems.push("tunnels must be a list of tables ([[tunnels]])".to_owned());
        return (Vec::new(), 0);
    };
    let mut out = Vec::new();
    let mut refused = 0;
    for (i, item) in list.iter().enumerate() {
        let name = format!("tunnels[{i}]");
        let found = match item.clone().into_table() {
            Ok(table) => table_of::<TunnelConfig>(&name, item, &table, &EnvKeys::default()),
            Err(_) => Err(vec![format!("{name} must be a table with an id")]),
        };
        match found {
            Ok(t) => out.push(t),
            Err(found) => {
                refused += 1;
                problems.extend(found);
            }
        }
    }
    (out, refused)
}

/// One table: its unknown keys, else its bad values, else the value.
fn table_of<T: for<'de> Deserialize<'de>>(
    name: &str,
    value: &config::Value,
    table: &config::Map<String, config::Value>,
    env: &EnvKeys,
) -> Result<T, Vec<String>> {
    let known = fields_of::<T>();
    let unknown: Vec<String> = table
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| unknown_key(name, k, known) + &env.blame(name, Some(k)))
        .collect();
    if !unknown.is_empty() {
        return Err(unknown);
    }
    value
        .clone()
        .try_deserialize::<T>()
        .map_err(|e| bad_keys::<T>(name, table, &e, env))
}

/// Finds which keys of a table that failed to deserialize are at fault, by trying
/// each key alone (every field has a default), and words one problem per bad key:
/// "<section>.<key> = <value> is invalid: <expected>".
fn bad_keys<T: for<'de> Deserialize<'de>>(
    section: &str,
    table: &config::Map<String, config::Value>,
    whole: &config::ConfigError,
    env: &EnvKeys,
) -> Vec<String> {
    let mut found = Vec::new();
    for (key, value) in table {
        let alone = config::Map::from([(key.clone(), value.clone())]);
        if let Err(e) = config::Value::from(alone).try_deserialize::<T>() {
            found.push(format!(
                "{section}.{key} = {}{} is invalid: {}",
                show_value(key, value),
                env.blame(section, Some(key)),
                describe(&e)
            ));
        }
    }
    if found.is_empty() {
        found.push(format!("{section}: {}", describe(whole)));
    }
    found
}

/// Keys whose values are secrets: a problem with one never shows its value.
const SECRET_KEYS: [&str; 2] = ["token", "admin_token"];

fn show_value(key: &str, v: &config::Value) -> String {
    if SECRET_KEYS.contains(&key) {
        return "***".to_owned();
    }
    match &v.kind {
        config::ValueKind::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// A TOML syntax error as a problem: where, and what the parser says, without
/// the line it quotes (which may hold a secret).
pub(crate) fn toml_syntax(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return format!("not valid TOML: {}", e.message());
    };
    let before = &text.as_bytes()[..span.start.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    format!(
        "not valid TOML at line {line}, column {column}: {}",
        e.message()
    )
}

/// "unknown key ..." with the nearest known key, or the list of them.
pub(crate) fn unknown_key(section: &str, key: &str, known: &[&str]) -> String {
    let full = if section.is_empty() {
        key.to_owned()
    } else {
        format!("{section}.{key}")
    };
    match nearest(key, known) {
        Some(near) => format!("unknown key {full:?}: did you mean {near:?}?"),
        None => format!("unknown key {full:?}: expected one of {}", known.join(", ")),
    }
}

/// The known key closest to `key`, if it is close enough to be a likely typo.
fn nearest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ServerConfig, Timeouts};
    use super::*;

    #[test]
    fn field_names_come_from_the_types() {
        assert_eq!(
            fields_of::<Config>(),
            &["server", "timeouts", "limits", "log", "admin", "tunnels"]
        );
        assert!(fields_of::<ServerConfig>().contains(&"admin_token"));
        assert_eq!(fields_of::<u16>(), &[] as &[&str]);
        assert_eq!(
            variants_of::<super::super::Rotation>(),
            &["minutely", "hourly", "daily", "never"]
        );
    }

    #[test]
    fn nearest_key_suggests_typos_only() {
        let server = fields_of::<ServerConfig>();
        assert_eq!(nearest("prot", server), Some("port"));
        assert_eq!(
            nearest("shutdown_grace_", fields_of::<Timeouts>()),
            Some("shutdown_grace")
        );
        assert_eq!(nearest("zzzzzzzz", server), None);
    }
}
