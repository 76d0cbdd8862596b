//! Aligned text tables for people, and the cells they are made of; `--json` prints the raw
//! result for scripts instead.

use sds::units::format_size;
use serde_json::Value;

/// Prints `rows` under `headers`, each column as wide as its widest cell.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", render_table(headers, rows));
}

/// `rows` under `headers` as text, each column as wide as its widest cell (in characters, so
/// a `µs` header lines up), one line per row, `(none)` under the headers when there is no row.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(padded.join("  ").trim_end());
        text.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        text.push_str("(none)\n");
    }
    text
}

// ---- Cells: a JSON result's fields as the text in a table's cells. ----

/// A field as text: a string as it is, `-` when absent, anything else as JSON.
pub fn text(value: &Value, key: &str) -> String {
    match &value[key] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A size in bytes as `1.0 GiB`; `-` when absent.
pub fn bytes(value: &Value, key: &str) -> String {
    value[key]
        .as_u64()
        .map(format_size)
        .unwrap_or_else(|| "-".into())
}

/// The strings of a JSON list, comma-separated; `-` when empty.
pub fn joined(value: &Value) -> String {
    let items: Vec<String> = value
        .as_array()
        .map(|list| {
            list.iter()
                .map(|item| match item {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// A limit: the number, or `-` for 0 (no limit).
pub fn limit(value: &Value, key: &str) -> String {
    match value[key].as_u64() {
        Some(0) | None => "-".into(),
        Some(n) => n.to_string(),
    }
}

/// The VOLATILE column: "yes" for a pool (or a volume of one) that starts empty at every
/// start of the server.
pub fn volatile(value: &Value) -> String {
    match value["volatile"].as_bool() {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

/// Under a table: the note of every row that has one (a volatile pool that started empty, data
/// lost), so people see it without --json.
pub fn print_notes(items: &[Value]) {
    for item in items {
        if let (Some(name), Some(note)) = (item["name"].as_str(), item["note"].as_str()) {
            println!("note: {name}: {note}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_by_characters() {
        let text = render_table(
            &["ID", "P50 µs"],
            &[
                vec!["1".into(), "12.5".into()],
                vec!["22".into(), "1300".into()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, ["ID  P50 µs", "1   12.5", "22  1300"]);
        assert_eq!(render_table(&["A"], &[]), "A\n(none)\n");
    }
}
