"""Full photos in, protected full photos out: the `facecloak protect` job."""
