//! Prints the streamops CRDs as YAML, or writes them into a directory.
//!
//! `crdgen` prints all CRDs as one multi-document stream (pipe it to
//! `kubectl apply -f -`); `crdgen --write DIR` writes one file per CRD;
//! `crdgen --reference FILE` writes the field reference (Markdown).

use std::{path::PathBuf, process::ExitCode};

use streamops_crds::{
    reference,
    schema::{CRD_FILES, crds, to_yaml},
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let write_dir = match args.as_slice() {
        [] => None,
        [flag, dir] if flag == "--write" => Some(PathBuf::from(dir)),
        [flag, file] if flag == "--reference" => {
            return match std::fs::write(file, reference::markdown(&crds())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("crdgen: cannot write {file}: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {
            eprintln!("usage: crdgen [--write DIR | --reference FILE]");
            return ExitCode::from(2);
        }
    };
    for (crd, file) in crds().iter().zip(CRD_FILES) {
        let yaml = match to_yaml(crd) {
            Ok(y) => y,
            Err(e) => {
                eprintln!("crdgen: cannot render {file}: {e}");
                return ExitCode::FAILURE;
            }
        };
        match &write_dir {
            Some(dir) => {
                if let Err(e) = std::fs::write(dir.join(file), yaml) {
                    eprintln!("crdgen: cannot write {}: {e}", dir.join(file).display());
                    return ExitCode::FAILURE;
                }
            }
            None => print!("---\n{yaml}"),
        }
    }
    ExitCode::SUCCESS
}
