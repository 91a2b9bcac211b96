//go:build !linux

package writeback

import "os"

// setDirect: no O_DIRECT here; every write goes through the page cache.
func setDirect(*os.File, bool) bool { return false }
