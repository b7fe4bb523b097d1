//! `quorum`: the thin binary. Arguments in, a face out.

fn main() {
    std::process::exit(llm_quorum::cli::main());
}
