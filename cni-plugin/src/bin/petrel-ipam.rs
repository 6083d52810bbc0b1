//! The `petrel-ipam` CNI IPAM plugin and its `list` command: see the crate documentation.
fn main() {
    petrel_cni::ipam_plugin::main()
}
