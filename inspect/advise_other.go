//go:build !linux

package inspect

import "os"

// adviseSequential has no portable equivalent outside Linux; reads go as they are.
func adviseSequential(*os.File) {}
