package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"syscall"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"glimpse/inspect"
)

func formatFlag() cli.Flag {
	return &cli.StringFlag{Name: "f", Aliases: []string{"format"}, Usage: "parse as `FMT` instead of probing (Glance names; qemu's vpc is an alias of vhd)"}
}

func outputFlag() cli.Flag {
	return &cli.StringFlag{Name: "output", Value: "human", Usage: "`human` or json"}
}

func infoCommand() *cli.Command {
	return &cli.Command{
		Name:      "info",
		Usage:     "describe disk images (like qemu-img info), with safety findings",
		ArgsUsage: "FILE...",
		Flags: []cli.Flag{
			formatFlag(),
			outputFlag(),
			&cli.BoolFlag{Name: "allow-backing", Usage: "open backing files and data files named by the image (inside its directory only)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return cli.Exit("info: no FILE given", 1)
			}
			json, err := jsonOutput(c)
			if err != nil {
				return err
			}
			opt, err := openOptions(c)
			if err != nil {
				return err
			}
			var infos []inspect.Info
			failed := false
			for _, name := range c.Args().Slice() {
				info, err := describe(name, opt)
				if err != nil {
					fmt.Fprintln(c.App.ErrWriter, "glimpse:", err)
					failed = true
					continue
				}
				infos = append(infos, info)
			}
			if json {
				if c.NArg() == 1 {
					if len(infos) == 1 {
						writeJSON(c.App.Writer, infos[0])
					}
				} else {
					writeJSON(c.App.Writer, infos)
				}
			} else {
				for i, info := range infos {
					if i > 0 {
						fmt.Fprintln(c.App.Writer)
					}
					printInfo(c.App.Writer, info)
				}
			}
			if failed {
				return cli.Exit("", 1)
			}
			return nil
		},
	}
}

func jsonOutput(c *cli.Context) (bool, error) {
	switch c.String("output") {
	case "json":
		return true, nil
	case "human", "":
		return false, nil
	}
	return false, cli.Exit(fmt.Sprintf("--output must be human or json, not %q", c.String("output")), 1)
}

func openOptions(c *cli.Context) (inspect.OpenOptions, error) {
	var opt inspect.OpenOptions
	if f := c.String("f"); f != "" {
		format, err := inspect.ParseFormat(f)
		if err != nil {
			return opt, cli.Exit(err.Error(), 1)
		}
		opt.Format = format
	}
	opt.AllowBacking = c.Bool("allow-backing")
	return opt, nil
}

// describe opens one file and returns its Info, with actual size and safety filled in.
func describe(name string, opt inspect.OpenOptions) (inspect.Info, error) {
	img, err := inspect.OpenFile(name, opt)
	if err != nil {
		return inspect.Info{}, err
	}
	defer img.Close()
	info := img.Info()
	info.ActualSize = diskUsage(name)
	return info, nil
}

// diskUsage is the space a file takes on disk (st_blocks × 512), as qemu-img's "disk size".
func diskUsage(name string) int64 {
	st, err := os.Stat(name)
	if err != nil {
		return 0
	}
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Blocks * 512
	}
	return st.Size()
}

func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "    ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		fmt.Fprintln(w, "glimpse: encoding JSON:", err)
	}
}

func sizeString(n int64) string {
	return fmt.Sprintf("%s (%d bytes)", humanize.IBytes(uint64(n)), n)
}

func printInfo(w io.Writer, info inspect.Info) {
	fmt.Fprintf(w, "image: %s\n", info.Filename)
	fmt.Fprintf(w, "file format: %s\n", info.Format)
	fmt.Fprintf(w, "virtual size: %s\n", sizeString(info.VirtualSize))
	if info.ActualSize > 0 {
		fmt.Fprintf(w, "disk size: %s\n", humanize.IBytes(uint64(info.ActualSize)))
	}
	if info.ClusterSize > 0 {
		fmt.Fprintf(w, "cluster_size: %d\n", info.ClusterSize)
	}
	if info.Encrypted {
		fmt.Fprintln(w, "encrypted: yes")
	}
	if info.BackingFilename != "" {
		fmt.Fprintf(w, "backing file: %s\n", info.BackingFilename)
		if info.BackingFormat != "" {
			fmt.Fprintf(w, "backing file format: %s\n", info.BackingFormat)
		}
	}
	if info.DataFile != "" {
		fmt.Fprintf(w, "data file: %s\n", info.DataFile)
	}
	if info.DirtyFlag {
		fmt.Fprintln(w, "dirty flag: yes")
	}
	if info.FormatSpecific != nil {
		fmt.Fprintln(w, "Format specific information:")
		printTree(w, "    ", info.FormatSpecific.Data)
	}
	for _, child := range info.Children {
		fmt.Fprintf(w, "disk in container: %s (%s, virtual size %s)\n", child.Filename, child.Format, sizeString(child.VirtualSize))
	}
	if len(info.Safety) == 0 {
		fmt.Fprintln(w, "safety: no findings")
	} else {
		fmt.Fprintln(w, "safety findings:")
		for _, f := range info.Safety {
			fmt.Fprintf(w, "    %s: %s\n", f.Code, f.Message)
		}
	}
}

// printTree prints any JSON-able value as indented "key: value" lines, the way qemu-img
// prints its format-specific information.
func printTree(w io.Writer, indent string, v any) {
	raw, err := json.Marshal(v)
	if err != nil {
		return
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // keep 64-bit sizes exact
	var tree any
	if dec.Decode(&tree) != nil {
		return
	}
	printNode(w, indent, tree)
}

func printNode(w io.Writer, indent string, v any) {
	switch t := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			switch child := t[k].(type) {
			case map[string]any, []any:
				fmt.Fprintf(w, "%s%s:\n", indent, k)
				printNode(w, indent+"    ", child)
			default:
				fmt.Fprintf(w, "%s%s: %s\n", indent, k, scalar(child))
			}
		}
	case []any:
		for i, e := range t {
			switch e.(type) {
			case map[string]any, []any:
				fmt.Fprintf(w, "%s[%d]:\n", indent, i)
				printNode(w, indent+"    ", e)
			default:
				fmt.Fprintf(w, "%s[%d]: %s\n", indent, i, scalar(e))
			}
		}
	default:
		fmt.Fprintf(w, "%s%s\n", indent, scalar(t))
	}
}

func scalar(v any) string {
	switch t := v.(type) {
	case json.Number:
		return t.String()
	case string:
		if strings.ContainsAny(t, "\n\r") {
			return fmt.Sprintf("%q", t)
		}
		return t
	case nil:
		return "null"
	}
	return fmt.Sprint(v)
}
