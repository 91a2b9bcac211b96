package convert

import (
	"fmt"
	"io"
)

// Placeholder: the vdi writer lands in this file.
func newVDIWriter(name string, stdout io.Writer, o FormatOptions) (Writer, error) {
	return nil, fmt.Errorf("writing vdi is not implemented yet")
}
