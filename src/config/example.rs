//! Reading `gateway.example.toml` as documentation: its keys (set or commented
//! out), the section each is in, and the comment block above each. The test that
//! holds the example to the code and the generator of `gateway.toml(5)` both read
//! it through here, so the manual page says what the checked example says.

/// One key as the example shows it: set, or commented out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExampleKey {
    /// `server`, `timeouts`, `log` or `tunnels`.
    pub section: String,
    /// The key.
    pub key: String,
    /// Its value as written.
    pub value: String,
    /// Shown as `# key = value`: an example, not a setting.
    pub commented: bool,
    /// Line index in the file.
    pub line: usize,
    /// The comment block just above the key, joined into one line.
    pub doc: String,
}

/// `key = value` or `# key = value`, where key is a lowercase identifier.
fn key_line(line: &str) -> Option<(bool, String, String)> {
    let (commented, rest) = match line.strip_prefix('#') {
        Some(r) => (true, r.strip_prefix(' ')?),
        None => (false, line),
    };
    let (key, value) = rest.split_once(" = ")?;
    let is_ident = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    is_ident.then(|| (commented, key.to_owned(), value.trim().to_owned()))
}

/// `[server]`, `[[tunnels]]`, `# [[tunnels]]`: the section name.
fn section_line(line: &str) -> Option<String> {
    let line = line.strip_prefix("# ").unwrap_or(line).trim();
    let name = line.strip_prefix('[')?.strip_suffix(']')?;
    let name = name.trim_start_matches('[').trim_end_matches(']');
    Some(name.to_owned())
}

/// Every key the example shows, in order.
pub fn scan(text: &str) -> Vec<ExampleKey> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut doc = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if let Some(s) = section_line(line) {
            section = s;
            doc.clear();
        } else if let Some((commented, key, value)) = key_line(line) {
            out.push(ExampleKey {
                section: section.clone(),
                key,
                value,
                commented,
                line: i,
                doc: std::mem::take(&mut doc),
            });
        } else if let Some(comment) = line.strip_prefix('#') {
            doc.push(' ');
            doc.push_str(comment.trim());
        } else if line.is_empty() {
            doc.clear();
        }
    }
    out
}

/// The file's introduction: the comment lines before its first section, without
/// their `# ` (an empty string for a blank comment line).
pub fn intro(text: &str) -> Vec<String> {
    text.lines()
        .take_while(|l| section_line(l.trim_end()).is_none())
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end().to_owned())
        .collect()
}
