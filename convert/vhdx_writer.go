package convert

import (
	"fmt"
	"io"
)

// Placeholder: the vhdx writer lands in this file.
func newVHDXWriter(name string, stdout io.Writer, o FormatOptions) (Writer, error) {
	return nil, fmt.Errorf("writing vhdx is not implemented yet")
}
