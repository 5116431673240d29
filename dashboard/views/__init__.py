"""Page sections: each renders one part of the page from a RunResult."""
