package convert

import (
	"fmt"
	"io"
)

// Placeholder: the vhd writer lands in this file.
func newVHDWriter(name string, stdout io.Writer, o FormatOptions) (Writer, error) {
	return nil, fmt.Errorf("writing vhd is not implemented yet")
}
