//! The `se3` command-line program.

fn main() {
    println!("se3");
}
