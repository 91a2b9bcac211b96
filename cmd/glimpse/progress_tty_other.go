//go:build !linux && !darwin && !freebsd && !netbsd && !openbsd && !dragonfly

package main

import "io"

// isTerminal cannot tell on this system, so the progress bar stays off.
func isTerminal(io.Writer) bool { return false }
