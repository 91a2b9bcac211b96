package inspect

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinels, tested with errors.Is.
var (
	// ErrWrongFormat: the bytes are not the format asked for. Probe moves on to the next
	// format only on this error; any other error from a format's parser stops the walk.
	ErrWrongFormat = errors.New("not this format")
	// ErrUnsupported: the image is valid, but uses something glimpse cannot read (an
	// encryption method, a compression type, a dirty log). Info, Safety and Check still work.
	ErrUnsupported = errors.New("unsupported")
	// ErrNotAllowed: reading the image needs another file (a backing file, an external data
	// file, a flat extent) and the caller did not allow it, or the name leaves the image's
	// directory, or the chain is too deep or loops.
	ErrNotAllowed = errors.New("not allowed")
	// ErrInvalid: the image is malformed. Every *FormatError matches it.
	ErrInvalid = errors.New("invalid image")
)

// FormatError says what is wrong with an image and where, in the style of debug/elf's
// FormatError: "disk.qcow2: qcow2 header: l1_size 4294967295 at offset 36 exceeds file size".
type FormatError struct {
	File      string // the file's name; empty when not known
	Format    Format
	Structure string // "header", "L1 table", "grain directory", …
	Field     string // the field's name in the spec, "" when the whole structure is at fault
	Offset    int64  // byte offset of the field or structure in the file; -1 when not known
	Value     any    // the offending value; nil when there is none to show
	Msg       string
}

func (e *FormatError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(": ")
	}
	b.WriteString(string(e.Format))
	if e.Structure != "" {
		b.WriteString(" ")
		b.WriteString(e.Structure)
	}
	b.WriteString(":")
	if e.Field != "" {
		b.WriteString(" ")
		b.WriteString(e.Field)
	}
	if e.Value != nil {
		fmt.Fprintf(&b, " %v", e.Value)
	}
	if e.Offset >= 0 {
		fmt.Fprintf(&b, " at offset %d", e.Offset)
	}
	if e.Msg != "" {
		b.WriteString(" ")
		b.WriteString(e.Msg)
	}
	return b.String()
}

// Is makes every FormatError match ErrInvalid.
func (e *FormatError) Is(target error) bool { return target == ErrInvalid }

// ferr builds a FormatError; the file name is filled in by Open.
func ferr(f Format, structure, field string, off int64, val any, msg string, args ...any) *FormatError {
	if len(args) > 0 {
		msg = fmt.Sprintf(msg, args...)
	}
	return &FormatError{Format: f, Structure: structure, Field: field, Offset: off, Value: val, Msg: msg}
}

// wrongFormat is the error a parser returns when the magic does not match.
func wrongFormat(f Format, what string) error {
	return fmt.Errorf("%s: %s: %w", f, what, ErrWrongFormat)
}

// unsupported wraps ErrUnsupported with the format and what is not supported.
func unsupported(f Format, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", f, fmt.Sprintf(format, args...), ErrUnsupported)
}

// nameErrors puts the file name into every FormatError in err's chain.
func nameErrors(err error, name string) error {
	if err == nil || name == "" {
		return err
	}
	var fe *FormatError
	if errors.As(err, &fe) {
		if fe.File == "" {
			fe.File = name
		}
		return err
	}
	if strings.HasPrefix(err.Error(), name+":") {
		return err
	}
	return fmt.Errorf("%s: %w", name, err)
}
