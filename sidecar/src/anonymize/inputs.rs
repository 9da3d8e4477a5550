//! Finding the work: each INPUT file, and the `*.csv` files under each
//! INPUT directory, with the output path each one gets under `--out`.
//!
//! Checked before anything is written, on the main thread:
//!
//! 1. Every input exists.
//! 2. A file is recognised by its device and inode ([`FileId`]), not by
//!    its path: no output may be an existing file that is an input, however
//!    it is reached (a hard link, a bind mount, a symlinked `--out`), and
//!    an `--out` directory that is an input directory or inside one (by
//!    identity too) is refused or not searched, so a run never reads its
//!    own outputs. [`Job::id`] is what the worker checks again when it
//!    opens the file.
//! 3. A symbolic link met while searching a directory is read only when it
//!    points inside that INPUT directory (resolved), unless
//!    `--follow-symlinks`; links to directories are never followed (no
//!    loops). A link skipped is named in a warning; what it points to is
//!    never read.
//! 4. No two inputs share an output.
//!
//! Every name printed here goes through [`shown`]: a file name is input.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};

use super::args::Usage;
use super::shown;

/// A file's identity: its device and inode numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The identity of the file `meta` describes.
    pub(crate) fn of(meta: &fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// One input file and where its output goes.
#[derive(Debug)]
pub(crate) struct Job {
    /// The path to read, as reached from the INPUT given.
    pub(crate) input: PathBuf,
    /// The output path: `--out` joined with the input's relative path.
    pub(crate) output: PathBuf,
    /// The input's size in bytes when found.
    pub(crate) size: u64,
    /// The input's identity when found; the file opened must still be it.
    pub(crate) id: FileId,
}

impl Job {
    /// The input path as the user named it, escaped, for messages.
    pub(crate) fn name(&self) -> String {
        shown::path(&self.input)
    }
}

/// A directory (or entry) that could not be searched: reported as a
/// failed row, and the run goes on with the files that were found.
#[derive(Debug)]
pub(crate) struct Problem {
    /// Escaped.
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
    id: FileId,
    size: u64,
}

/// Finds the input files of `inputs` and their outputs under `out`;
/// `follow_symlinks` reads links that point out of their INPUT directory.
///
/// # Errors
///
/// A [`Usage`] error for an input that does not exist or is neither a file
/// nor a directory, `--out` being an input directory or not a directory,
/// two inputs with the same output, an output that is an input, and when
/// no CSV file is found at all.
pub(crate) fn discover(
    inputs: &[PathBuf],
    out: &Path,
    follow_symlinks: bool,
) -> Result<Found, Usage> {
    let out_dir = resolve(out)
        .map_err(|err| Usage(format!("cannot resolve --out {}: {err}", shown::path(out))))?;
    let out_id = match fs::metadata(&out_dir) {
        Ok(meta) if !meta.is_dir() => {
            return Err(Usage(format!(
                "--out {} exists and is not a directory",
                shown::path(out)
            )));
        }
        Ok(meta) => Some(FileId::of(&meta)),
        Err(_) => None,
    };
    let mut walk = Walk {
        out_dir: &out_dir,
        out_id,
        follow_symlinks,
        root: PathBuf::new(),
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
        let names: Vec<String> = inputs.iter().map(|p| shown::path(p)).collect();
        return Err(Usage(format!(
            "no CSV file found in {} (directories are searched for *.csv)",
            names.join(", ")
        )));
    }
    Ok(Found { jobs, problems })
}

struct Walk<'a> {
    out_dir: &'a Path,
    /// `--out`'s identity, if it exists.
    out_id: Option<FileId>,
    follow_symlinks: bool,
    /// The INPUT directory being searched, resolved.
    root: PathBuf,
    candidates: Vec<Candidate>,
    problems: Vec<Problem>,
}

impl Walk<'_> {
    /// One INPUT argument (followed if it is a link: the user named it).
    fn input(&mut self, input: &Path) -> Result<(), Usage> {
        let name = shown::path(input);
        let meta = fs::metadata(input).map_err(|err| Usage(format!("input {name}: {err}")))?;
        let canonical =
            fs::canonicalize(input).map_err(|err| Usage(format!("input {name}: {err}")))?;
        if meta.is_file() {
            let Some(file_name) = input.file_name() else {
                return Err(Usage(format!("input {name} has no file name")));
            };
            self.candidates.push(Candidate {
                input: input.to_path_buf(),
                canonical,
                rel: PathBuf::from(file_name),
                id: FileId::of(&meta),
                size: meta.len(),
            });
            Ok(())
        } else if meta.is_dir() {
            if canonical == self.out_dir || self.is_out(&meta) {
                return Err(Usage(format!(
                    "--out is the input directory {name}; choose another output directory"
                )));
            }
            self.root = canonical;
            self.dir(input, Path::new(""));
            Ok(())
        } else {
            Err(Usage(format!(
                "input {name} is neither a file nor a directory"
            )))
        }
    }

    /// Invariant 2: `meta` is the `--out` directory.
    fn is_out(&self, meta: &fs::Metadata) -> bool {
        self.out_id == Some(FileId::of(meta))
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
                let is_out = fs::symlink_metadata(&child).is_ok_and(|m| self.is_out(&m));
                match fs::canonicalize(&child) {
                    Ok(canonical) if is_out || canonical == self.out_dir => {
                        log::debug!("not searching {}: it is --out", shown::path(&child));
                    }
                    Ok(_) => self.dir(&child, &child_rel),
                    Err(err) => self.problem(&child, err),
                }
            } else if is_csv(&name) {
                let canonical = match fs::canonicalize(&child) {
                    Ok(canonical) => canonical,
                    Err(err) => {
                        self.problem(&child, err);
                        continue;
                    }
                };
                // Invariant 3: nothing is read through a link out of the
                // INPUT directory unless asked.
                if kind.is_symlink() && !self.follow_symlinks && !canonical.starts_with(&self.root)
                {
                    log::warn!(
                        "skipping {}: a symbolic link out of its input directory \
                         (give --follow-symlinks to read it)",
                        shown::path(&child)
                    );
                    continue;
                }
                match fs::metadata(&child) {
                    Ok(meta) if meta.is_file() => self.candidates.push(Candidate {
                        input: child,
                        canonical,
                        rel: child_rel,
                        id: FileId::of(&meta),
                        size: meta.len(),
                    }),
                    Ok(_) => {
                        log::warn!("skipping {}: not a regular file", shown::path(&child));
                    }
                    Err(err) => self.problem(&child, err),
                }
            } else if kind.is_symlink() && child.is_dir() {
                log::warn!(
                    "not following {}: a symbolic link to a directory (name it as an INPUT to include it)",
                    shown::path(&child)
                );
            }
        }
    }

    fn problem(&mut self, path: &Path, err: io::Error) {
        let name = shown::path(path);
        log::warn!("cannot search {name}: {err}");
        self.problems.push(Problem {
            name,
            message: format!("cannot read: {err}"),
        });
    }
}

/// Drops repeated inputs, then refuses shared outputs and outputs that are
/// inputs (invariants 2 and 4).
fn check(candidates: Vec<Candidate>, out: &Path, out_dir: &Path) -> Result<Vec<Job>, Usage> {
    let mut seen = HashSet::new();
    let mut unique = Vec::with_capacity(candidates.len());
    for c in candidates {
        if seen.insert(c.canonical.clone()) {
            unique.push(c);
        } else {
            log::info!(
                "{} is named more than once; processing it once",
                shown::path(&c.input)
            );
        }
    }
    let ids: HashSet<FileId> = unique.iter().map(|c| c.id).collect();
    let mut outputs: HashMap<PathBuf, &Path> = HashMap::new();
    let mut jobs = Vec::with_capacity(unique.len());
    for c in &unique {
        let output = out.join(&c.rel);
        let resolved = out_dir.join(&c.rel);
        if let Some(other) = outputs.insert(resolved.clone(), &c.input) {
            return Err(Usage(format!(
                "{} and {} would both be written to {}; give them separately with different --out",
                shown::path(other),
                shown::path(&c.input),
                shown::path(&output)
            )));
        }
        let physical = resolve(&resolved).unwrap_or(resolved);
        let same_file = fs::metadata(&output).is_ok_and(|m| ids.contains(&FileId::of(&m)));
        if same_file || seen.contains(&physical) {
            return Err(Usage(format!(
                "the output {} would overwrite an input; choose another --out",
                shown::path(&output)
            )));
        }
        jobs.push(Job {
            input: c.input.clone(),
            output,
            size: c.size,
            id: c.id,
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
