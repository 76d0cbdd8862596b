//! Aligned text tables for people; `--json` prints the raw result for scripts instead.

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
