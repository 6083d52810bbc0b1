//! The `petrel-cni` CNI plugin: see the crate documentation.
fn main() {
    petrel_cni::plugin::main()
}
