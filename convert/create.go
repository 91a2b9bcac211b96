package convert

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	"glimpse/inspect"
)

// FormatOptions are the output options of qemu-img convert: -o key=value pairs and -c.
type FormatOptions struct {
	// Options holds the -o pairs (subformat=streamOptimized, cluster_size=65536, …).
	Options map[string]string
	// Compress is -c: compressed clusters (qcow2) or grains (vmdk streamOptimized).
	Compress bool
	// Sync flushes the output to stable storage before it is renamed into place.
	Sync bool
}

// take returns the value of key and marks it used.
func (o FormatOptions) take(used map[string]bool, key string) (string, bool) {
	v, ok := o.Options[key]
	if ok {
		used[key] = true
	}
	return v, ok
}

// takeBool reads key, when given, as qemu's boolean (on/off and its spellings) into dst.
// Errors read "FORMAT: -o KEY=VALUE: why", as every writer's do.
func (o FormatOptions) takeBool(used map[string]bool, format, key string, dst *bool) error {
	v, ok := o.take(used, key)
	if !ok {
		return nil
	}
	b, err := parseQemuBool(v)
	if err != nil {
		return fmt.Errorf("%s: -o %s=%s: %s", format, key, v, err)
	}
	*dst = b
	return nil
}

// unknown reports the -o keys a writer did not use, naming the ones it knows.
func (o FormatOptions) unknown(format inspect.Format, used map[string]bool, known ...string) error {
	var bad []string
	for k := range o.Options {
		if !used[k] {
			bad = append(bad, k)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	sort.Strings(bad)
	known = slices.Clone(known)
	sort.Strings(known)
	return fmt.Errorf("%s does not know the option(s) %s (it knows: %s)", format, strings.Join(bad, ", "), strings.Join(known, ", "))
}

// ParseOptionList parses qemu-img's -o syntax: "key=value,key=value" (a doubled comma is a
// comma inside a value).
func ParseOptionList(s string, into map[string]string) error {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			parts = append(parts, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	parts = append(parts, cur.String())
	for _, p := range parts {
		if p == "" {
			continue
		}
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return fmt.Errorf("-o %q: want key=value", p)
		}
		into[strings.TrimSpace(k)] = v
	}
	return nil
}

// Create makes the Writer for format that writes to the file name, or to stdout when name
// is "-" (formats that can be streamed: raw, vmdk streamOptimized). Options that format
// does not know are an error.
func Create(format inspect.Format, name string, stdout io.Writer, o FormatOptions) (Writer, error) {
	switch format {
	case inspect.Raw:
		used := map[string]bool{}
		if err := o.unknown(format, used); err != nil {
			return nil, err
		}
		if o.Compress {
			return nil, fmt.Errorf("raw output cannot be compressed (-c)")
		}
		if name == "-" {
			return NewRawStream(stdout, "standard output"), nil
		}
		return CreateRaw(name, RawOptions{Sync: o.Sync})
	case inspect.QCOW2:
		return newQCOW2Writer(name, stdout, o)
	case inspect.VMDK:
		return newVMDKWriter(name, stdout, o)
	case inspect.VHD:
		return newVHDWriter(name, stdout, o)
	case inspect.VHDX:
		return newVHDXWriter(name, stdout, o)
	case inspect.VDI:
		return newVDIWriter(name, stdout, o)
	}
	return nil, fmt.Errorf("glimpse cannot write %s images (it writes raw, qcow2, vmdk, vhd, vhdx, vdi)", format)
}
