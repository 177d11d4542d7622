//! Relink the BPF object when bpf-linker changes (it is the code generator for this target).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
