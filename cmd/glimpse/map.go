package main

import (
	"bufio"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"glimpse/convert"
	"glimpse/inspect"
)

func mapCommand() *cli.Command {
	return &cli.Command{
		Name:      "map",
		Usage:     "print the allocation map of an image (like qemu-img map)",
		ArgsUsage: "FILE",
		Flags: []cli.Flag{
			formatFlag(),
			outputFlag(),
			&cli.BoolFlag{Name: "allow-backing", Usage: "follow backing files and data files the image names (inside its directory only)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("map: need one FILE", 1)
			}
			asJSON, err := jsonOutput(c)
			if err != nil {
				return err
			}
			opt, err := openOptions(c)
			if err != nil {
				return err
			}
			name := c.Args().First()
			img, err := inspect.OpenFile(name, opt)
			if err != nil {
				return cli.Exit("map: "+err.Error(), 1)
			}
			defer img.Close()
			w := bufio.NewWriter(c.App.Writer)
			defer w.Flush()
			if asJSON {
				// qemu-img's own layout: one object per line, in a JSON array.
				fmt.Fprint(w, "[")
				first := true
				err = convert.Map(c.Context, img, func(e convert.MapEntry) error {
					if !first {
						fmt.Fprint(w, ",\n")
					}
					first = false
					fmt.Fprintf(w, `{ "start": %d, "length": %d, "depth": %d, "present": %t, "zero": %t, "data": %t`,
						e.Start, e.Length, e.Depth, e.Present, e.Zero, e.Data)
					if e.Offset >= 0 {
						fmt.Fprintf(w, `, "offset": %d`, e.Offset)
					}
					fmt.Fprint(w, "}")
					return nil
				})
				if first && err == nil {
					// qemu-img prints one empty entry for an empty disk.
					fmt.Fprint(w, `{ "start": 0, "length": 0, "depth": 0, "present": false, "zero": false, "data": false}`)
				}
				fmt.Fprintln(w, "]")
			} else {
				files := chainFiles{names: []string{name}, info: []inspect.Info{img.Info()}, opt: opt}
				fmt.Fprintf(w, "%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File")
				err = convert.Map(c.Context, img, func(e convert.MapEntry) error {
					if !e.Data {
						return nil
					}
					if e.Offset < 0 {
						return errNoOffset
					}
					if !e.Zero {
						fmt.Fprintf(w, "%-16s%-16s%-16s%s\n", hex0(e.Start), hex0(e.Length), hex0(e.Offset), files.name(e.Depth))
					}
					return nil
				})
			}
			if err != nil {
				w.Flush()
				return cli.Exit("map: "+err.Error(), 1)
			}
			return nil
		},
	}
}

var errNoOffset = errors.New("File contains external, encrypted or compressed clusters.")

// hex0 prints like C's %#x: 0x-prefixed, except zero, which is "0".
func hex0(v int64) string {
	if v == 0 {
		return "0"
	}
	return fmt.Sprintf("%#x", v)
}

// chainFiles names the file that holds the data of each depth of a backing chain, as
// qemu-img map's File column does: the image, its backing file, and so on (or the data
// file of a layer that has one), found by opening each layer's metadata only.
type chainFiles struct {
	names []string
	info  []inspect.Info
	opt   inspect.OpenOptions
}

func (f *chainFiles) name(depth int) string {
	for len(f.info) <= depth {
		last := f.info[len(f.info)-1]
		if last.BackingFilename == "" {
			return "?"
		}
		next := filepath.Join(filepath.Dir(f.names[len(f.names)-1]), last.BackingFilename)
		opt := inspect.OpenOptions{AllowBacking: f.opt.AllowBacking}
		if bf, err := inspect.ParseFormat(last.BackingFormat); err == nil && last.BackingFormat != "" {
			opt.Format = bf
		}
		img, err := inspect.OpenFile(next, opt)
		if err != nil {
			return next
		}
		f.names = append(f.names, next)
		f.info = append(f.info, img.Info())
		img.Close()
	}
	if df := f.info[depth].DataFile; df != "" {
		return filepath.Join(filepath.Dir(f.names[depth]), df)
	}
	return f.names[depth]
}
