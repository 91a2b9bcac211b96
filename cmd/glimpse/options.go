package main

import (
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"glimpse/convert"
)

// formatOptions gathers qemu-img's output options: every -o KEY=VALUE,... (repeatable) and
// -c.
func formatOptions(c *cli.Context) (convert.FormatOptions, error) {
	o := convert.FormatOptions{Options: map[string]string{}, Compress: c.Bool("c")}
	for _, s := range c.StringSlice("o") {
		if err := convert.ParseOptionList(s, o.Options); err != nil {
			return o, err
		}
	}
	return o, nil
}

// baseName is a file's name without its directory and extension.
func baseName(p string) string {
	b := filepath.Base(p)
	if ext := filepath.Ext(b); ext != "" && ext != b {
		b = strings.TrimSuffix(b, ext)
	}
	return b
}
