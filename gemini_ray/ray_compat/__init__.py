"""Every use of a private Ray API, with the Ray versions it was tested on."""
