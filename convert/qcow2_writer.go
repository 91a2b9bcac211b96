package convert

import (
	"fmt"
	"io"
)

// Placeholder: the qcow2 writer lands in this file.
func newQCOW2Writer(name string, stdout io.Writer, o FormatOptions) (Writer, error) {
	return nil, fmt.Errorf("writing qcow2 is not implemented yet")
}
