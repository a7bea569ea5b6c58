//! The settings reference: one Markdown table generated from the settings table, kept in the
//! README between `<!-- settings:begin -->` and `<!-- settings:end -->` (a test checks it).

use super::declare::table;

/// Every setting as a Markdown table: file key, flag, default, accepted values, meaning (the
/// README's settings reference).
pub fn reference() -> String {
    let mut out = String::from(
        "| file key | flag (env `INFERPICK_<FLAG>`) | default | accepts | meaning |\n|---|---|---|---|---|\n",
    );
    for t in table() {
        let flag = t
            .flag()
            .map_or_else(String::new, |f| format!("`{} {}`", f.long, f.value_name));
        let default = match t.default_text() {
            d if d.is_empty() => "none".to_string(),
            d => format!("`{d}`"),
        };
        let row = [
            format!("`{}`", t.key()),
            flag,
            default,
            t.accepts(),
            t.doc(),
        ]
        .map(|cell| cell.replace('|', "\\|"));
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}
