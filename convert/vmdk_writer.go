package convert

import (
	"fmt"
	"io"
)

// Placeholder: the vmdk writer lands in this file.
func newVMDKWriter(name string, stdout io.Writer, o FormatOptions) (Writer, error) {
	return nil, fmt.Errorf("writing vmdk is not implemented yet")
}
