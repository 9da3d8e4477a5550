//! Which columns to pseudonymize and which to drop, and what that means
//! for one file's header.

use csv::ByteRecord;

use super::args::Usage;
use super::shown;

/// The column names given on the command line, checked.
#[derive(Debug)]
pub(crate) struct Columns {
    identify: Vec<String>,
    drop: Vec<String>,
}

/// What happens to one column of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Copied as it is.
    Keep,
    /// Replaced by its pseudonym (empty stays empty).
    Pseudonymize,
    /// Left out of the output.
    Drop,
}

impl Columns {
    /// Refuses empty names and a column both pseudonymized and dropped;
    /// repeated names count once.
    pub(crate) fn new(identify: Vec<String>, drop: Vec<String>) -> Result<Columns, Usage> {
        let identify = dedup(identify, "--columns")?;
        let drop = dedup(drop, "--drop")?;
        if let Some(both) = identify.iter().find(|c| drop.contains(c)) {
            return Err(Usage(format!(
                "column `{}` is given to both --columns and --drop; keep it in one",
                shown::text(both)
            )));
        }
        Ok(Columns { identify, drop })
    }

    /// One action per column of `header`.
    ///
    /// # Errors
    ///
    /// A message naming the first identifier or drop column the header
    /// lacks, and the columns it has.
    pub(crate) fn plan(&self, header: &ByteRecord) -> Result<Vec<Action>, String> {
        let has = |name: &str| header.iter().any(|h| h == name.as_bytes());
        let missing = |name: &String, what: &str| {
            format!(
                "missing {what} column `{}` (the first line has {}; its names are not \
                 shown: in an export without a header row they would be a patient's data)",
                shown::text(name),
                describe(header)
            )
        };
        if let Some(name) = self.identify.iter().find(|n| !has(n)) {
            return Err(missing(name, "identifier"));
        }
        if let Some(name) = self.drop.iter().find(|n| !has(n)) {
            return Err(missing(name, "--drop"));
        }
        let plan = header
            .iter()
            .map(|h| {
                if self.identify.iter().any(|n| n.as_bytes() == h) {
                    Action::Pseudonymize
                } else if self.drop.iter().any(|n| n.as_bytes() == h) {
                    Action::Drop
                } else {
                    Action::Keep
                }
            })
            .collect();
        Ok(plan)
    }
}

fn dedup(names: Vec<String>, flag: &str) -> Result<Vec<String>, Usage> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        if name.is_empty() {
            return Err(Usage(format!(
                "{flag} has an empty column name (a stray comma?)"
            )));
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// How many columns the header has (never their names: see `plan`).
fn describe(header: &ByteRecord) -> String {
    match header.len() {
        0 => "no columns".to_string(),
        1 => "1 column".to_string(),
        n => format!("{n} columns"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(identify: &[&str], drop: &[&str]) -> Result<Columns, Usage> {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Columns::new(own(identify), own(drop))
    }

    #[test]
    fn plan_follows_the_header_order() {
        let c = columns(&["id", "name"], &["phone"]).unwrap();
        let header = ByteRecord::from(vec!["name", "score", "phone", "id", "name"]);
        assert_eq!(
            c.plan(&header).unwrap(),
            [
                Action::Pseudonymize,
                Action::Keep,
                Action::Drop,
                Action::Pseudonymize,
                Action::Pseudonymize
            ]
        );
    }

    #[test]
    fn a_missing_column_is_named_and_the_header_s_names_are_not_shown() {
        let c = columns(&["id", "dob"], &[]).unwrap();
        let err = c.plan(&ByteRecord::from(vec!["id", "P-1001"])).unwrap_err();
        assert!(err.contains("`dob`") && err.contains("2 columns"), "{err}");
        assert!(
            !err.contains("P-1001"),
            "a header (or a patient's data) shown: {err}"
        );
        let c = columns(&["id"], &["phone"]).unwrap();
        let err = c.plan(&ByteRecord::from(vec!["id"])).unwrap_err();
        assert!(
            err.contains("--drop column `phone`") && err.contains("1 column"),
            "{err}"
        );
    }

    #[test]
    fn bad_lists_are_refused() {
        assert!(columns(&["id", ""], &[]).is_err());
        assert!(columns(&["id"], &["id"]).is_err());
        assert_eq!(columns(&["id", "id"], &[]).unwrap().identify, ["id"]);
    }
}
