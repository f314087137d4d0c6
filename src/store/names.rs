//! The rules for the names people give segments and exports. A segment's name becomes an Iterable list name and an
//! export's name a trigger file name, and both appear in log lines: control characters would let a name forge log
//! lines, and unbounded lengths would not fit Iterable or a file system.

/// Longest name, in characters and in UTF-8 bytes.
pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_NAME_BYTES: usize = 250;

/// The name every export runs under as a trigger file, so no export may have it.
const ALL: &str = "all";

/// Checks a segment name; the error says which rule it breaks.
pub fn check_segment_name(name: &str) -> Result<(), String> {
    check_text(name)
}

/// Checks an export name: a segment name's rules, plus those of a trigger file name.
pub fn check_export_name(name: &str) -> Result<(), String> {
    check_text(name)?;
    if name.contains('/') {
        return Err("holds '/', which cannot be part of a trigger file name".into());
    }
    if name.starts_with('.') {
        return Err("starts with '.', which trigger files use for hidden temporary files".into());
    }
    if name == ALL {
        return Err("is 'all', the trigger file name that runs every export".into());
    }
    Ok(())
}

/// Longest user name, in characters.
pub const MAX_USER_NAME_CHARS: usize = 64;

/// Checks an account name: it appears in tokens' owners, audit rows and URLs, so it is kept plain (letters, digits,
/// `.`, `_`, `-`, `@`). A `:` would let it pass for the CLI's `local:` operator.
pub fn check_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.chars().count() > MAX_USER_NAME_CHARS {
        return Err(format!("is longer than {MAX_USER_NAME_CHARS} characters"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))) {
        return Err(format!("holds {c:?}; use letters, digits, '.', '_', '-' and '@' only"));
    }
    Ok(())
}

fn check_text(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("is empty".into());
    }
    if let Some((position, c)) = name.chars().enumerate().find(|(_, c)| c.is_control()) {
        return Err(format!(
            "holds the control character {:?} at position {}; use printable characters only",
            c,
            position + 1
        ));
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(format!("is {chars} characters long; at most {MAX_NAME_CHARS} are allowed"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("is {} bytes long in UTF-8; at most {MAX_NAME_BYTES} are allowed", name.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_break_the_rule_they_are_told() {
        assert!(check_export_name("VIP export").is_ok());
        assert!(check_segment_name("Churn risk – EU").is_ok());
        assert!(check_export_name("a\nINFO forged").unwrap_err().contains("control character"));
        assert!(check_segment_name("tab\there").unwrap_err().contains("'\\t'"));
        assert!(check_segment_name(&"x".repeat(201)).unwrap_err().contains("201 characters"));
        assert!(check_segment_name(&"é".repeat(130)).unwrap_err().contains("260 bytes"));
        assert!(check_segment_name(&"é".repeat(125)).is_ok());
        assert!(check_export_name("a/b").unwrap_err().contains('/'));
        assert!(check_export_name(".hidden").is_err());
        assert!(check_export_name("all").is_err());
        assert!(check_segment_name("all").is_ok(), "a segment may be called all");
        assert!(check_segment_name("  ").unwrap_err().contains("empty"));
    }
}
