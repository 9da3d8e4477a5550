//! Finding the work: each INPUT file, and the `*.csv` files under each
//! INPUT directory, with the output path each one gets under `--out`.
//!
//! Checked before anything is written: every input exists, no two inputs
//! share an output, no output is an input (paths compared after resolving
//! symlinks), and an `--out` directory inside an input directory is not
//! searched, so a run never reads its own outputs.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::args::Usage;

/// One input file and where its output goes.
#[derive(Debug)]
pub(crate) struct Job {
    /// The path to read, as reached from the INPUT given.
    pub(crate) input: PathBuf,
    /// The output path: `--out` joined with the input's relative path.
    pub(crate) output: PathBuf,
    /// The input's size in bytes when found.
    pub(crate) size: u64,
}

impl Job {
    /// The input path as the user named it, for messages.
    pub(crate) fn name(&self) -> String {
        self.input.display().to_string()
    }
}

/// A directory (or entry) that could not be searched: reported as a
/// failed row, and the run goes on with the files that were found.
#[derive(Debug)]
pub(crate) struct Problem {
    pub(crate) name: String,
    pub(crate) message: String,
}

/// What [`discover`] found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub(crate) jobs: Vec<Job>,
    pub(crate) problems: Vec<Problem>,
}

impl Found {
    /// The sum of the input sizes.
    pub(crate) fn bytes(&self) -> u64 {
        self.jobs.iter().map(|j| j.size).sum()
    }
}

/// A file found, before the checks.
struct Candidate {
    input: PathBuf,
    canonical: PathBuf,
    /// Relative path of the output under `--out`.
    rel: PathBuf,
}

/// Finds the input files of `inputs` and their outputs under `out`.
///
/// # Errors
///
/// A [`Usage`] error for an input that does not exist or is neither a file
/// nor a directory, `--out` being an input directory or not a directory,
/// two inputs with the same output, an output that is an input, and when
/// no CSV file is found at all.
pub(crate) fn discover(inputs: &[PathBuf], out: &Path) -> Result<Found, Usage> {
    let out_dir = resolve(out)
        .map_err(|err| Usage(format!("cannot resolve --out {}: {err}", out.display())))?;
    if out_dir.exists() && !out_dir.is_dir() {
        return Err(Usage(format!(
            "--out {} exists and is not a directory",
            out.display()
        )));
    }
    let mut walk = Walk {
        out_dir: &out_dir,
        candidates: Vec::new(),
        problems: Vec::new(),
    };
    for input in inputs {
        walk.input(input)?;
    }
    let Walk {
        candidates,
        problems,
        ..
    } = walk;
    let jobs = check(candidates, out, &out_dir)?;
    if jobs.is_empty() && problems.is_empty() {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        return Err(Usage(format!(
            "no CSV file found in {} (directories are searched for *.csv)",
            names.join(", ")
        )));
    }
    Ok(Found { jobs, problems })
}

struct Walk<'a> {
    out_dir: &'a Path,
    candidates: Vec<Candidate>,
    problems: Vec<Problem>,
}

impl Walk<'_> {
    /// One INPUT argument.
    fn input(&mut self, input: &Path) -> Result<(), Usage> {
        let meta = fs::metadata(input)
            .map_err(|err| Usage(format!("input {}: {err}", input.display())))?;
        let canonical = fs::canonicalize(input)
            .map_err(|err| Usage(format!("input {}: {err}", input.display())))?;
        if meta.is_file() {
            let Some(name) = input.file_name() else {
                return Err(Usage(format!("input {} has no file name", input.display())));
            };
            self.candidates.push(Candidate {
                input: input.to_path_buf(),
                canonical,
                rel: PathBuf::from(name),
            });
            Ok(())
        } else if meta.is_dir() {
            if canonical == self.out_dir {
                return Err(Usage(format!(
                    "--out is the input directory {}; choose another output directory",
                    input.display()
                )));
            }
            self.dir(input, Path::new(""));
            Ok(())
        } else {
            Err(Usage(format!(
                "input {} is neither a file nor a directory",
                input.display()
            )))
        }
    }

    /// Searches `dir` (reached as `path`, at `rel` below its INPUT).
    fn dir(&mut self, path: &Path, rel: &Path) {
        let mut entries: Vec<(OsString, fs::FileType)> = match fs::read_dir(path) {
            Ok(entries) => {
                let mut listed = Vec::new();
                for entry in entries {
                    match entry.and_then(|e| Ok((e.file_name(), e.file_type()?))) {
                        Ok(listed_entry) => listed.push(listed_entry),
                        Err(err) => return self.problem(path, err),
                    }
                }
                listed
            }
            Err(err) => return self.problem(path, err),
        };
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, kind) in entries {
            let child = path.join(&name);
            let child_rel = rel.join(&name);
            if kind.is_dir() {
                match fs::canonicalize(&child) {
                    Ok(canonical) if canonical == self.out_dir => {
                        log::debug!("not searching {}: it is --out", child.display());
                    }
                    Ok(_) => self.dir(&child, &child_rel),
                    Err(err) => self.problem(&child, err),
                }
            } else if is_csv(&name) {
                if kind.is_symlink() {
                    match fs::metadata(&child) {
                        Ok(meta) if meta.is_file() => {}
                        Ok(_) => {
                            log::warn!("skipping {}: not a regular file", child.display());
                            continue;
                        }
                        Err(err) => {
                            self.problem(&child, err);
                            continue;
                        }
                    }
                } else if !kind.is_file() {
                    log::warn!("skipping {}: not a regular file", child.display());
                    continue;
                }
                match fs::canonicalize(&child) {
                    Ok(canonical) => self.candidates.push(Candidate {
                        input: child,
                        canonical,
                        rel: child_rel,
                    }),
                    Err(err) => self.problem(&child, err),
                }
            } else if kind.is_symlink() && child.is_dir() {
                log::warn!(
                    "not following {}: a symbolic link to a directory (name it as an INPUT to include it)",
                    child.display()
                );
            }
        }
    }

    fn problem(&mut self, path: &Path, err: io::Error) {
        log::warn!("cannot search {}: {err}", path.display());
        self.problems.push(Problem {
            name: path.display().to_string(),
            message: format!("cannot read: {err}"),
        });
    }
}

/// Drops repeated inputs, then refuses shared outputs and outputs that are
/// inputs.
fn check(candidates: Vec<Candidate>, out: &Path, out_dir: &Path) -> Result<Vec<Job>, Usage> {
    let mut seen = HashSet::new();
    let mut unique = Vec::with_capacity(candidates.len());
    for c in candidates {
        if seen.insert(c.canonical.clone()) {
            unique.push(c);
        } else {
            log::info!(
                "{} is named more than once; processing it once",
                c.input.display()
            );
        }
    }
    let mut outputs: HashMap<PathBuf, &Path> = HashMap::new();
    let mut jobs = Vec::with_capacity(unique.len());
    for c in &unique {
        let output = out.join(&c.rel);
        let resolved = out_dir.join(&c.rel);
        if let Some(other) = outputs.insert(resolved.clone(), &c.input) {
            return Err(Usage(format!(
                "{} and {} would both be written to {}; give them separately with different --out",
                other.display(),
                c.input.display(),
                output.display()
            )));
        }
        let physical = resolve(&resolved).unwrap_or(resolved);
        if seen.contains(&physical) {
            return Err(Usage(format!(
                "the output {} would overwrite an input; choose another --out",
                output.display()
            )));
        }
        let size = fs::metadata(&c.input).map(|m| m.len()).unwrap_or(0);
        jobs.push(Job {
            input: c.input.clone(),
            output,
            size,
        });
    }
    Ok(jobs)
}

fn is_csv(name: &std::ffi::OsStr) -> bool {
    Path::new(name)
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("csv"))
}

/// `path` made absolute with every symlink resolved, also when its last
/// components do not exist yet (they are applied to the nearest existing
/// ancestor).
fn resolve(path: &Path) -> io::Result<PathBuf> {
    let mut base = std::path::absolute(path)?;
    let mut tail: Vec<OsString> = Vec::new();
    while fs::symlink_metadata(&base).is_err() {
        match base.components().next_back() {
            Some(Component::Normal(name)) => tail.push(name.to_owned()),
            Some(Component::ParentDir) => tail.push("..".into()),
            Some(Component::CurDir) => {}
            _ => break,
        }
        if !base.pop() {
            break;
        }
    }
    let mut resolved = fs::canonicalize(&base)?;
    for part in tail.iter().rev() {
        if part == ".." {
            resolved.pop();
        } else {
            resolved.push(part);
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_keeps_missing_components() {
        let tmp = std::env::temp_dir();
        let canonical = fs::canonicalize(&tmp).unwrap();
        let missing = tmp
            .join("quiesce-no-such-dir")
            .join("a")
            .join("..")
            .join("b");
        assert_eq!(
            resolve(&missing).unwrap(),
            canonical.join("quiesce-no-such-dir").join("b")
        );
    }

    #[test]
    fn csv_extension_ignores_case() {
        assert!(is_csv("a.csv".as_ref()) && is_csv("B.CSV".as_ref()));
        assert!(!is_csv("a.csv.quiesce-tmp-1".as_ref()) && !is_csv("csv".as_ref()));
    }
}
