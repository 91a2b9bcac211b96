package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"glimpse/convert"
	"glimpse/inspect"
)

// Exit codes of glimpse compare, as qemu-img compare's.
const (
	compareIdentical = 0
	compareDiffer    = 1
	compareError     = 2
)

func compareCommand() *cli.Command {
	return &cli.Command{
		Name:      "compare",
		Usage:     "compare the guest data of two images (like qemu-img compare); exit 0 identical, 1 different, 2 error",
		ArgsUsage: "A B",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "f", Usage: "parse A as `FMT` instead of probing"},
			&cli.StringFlag{Name: "F", Usage: "parse B as `FMT` instead of probing"},
			&cli.BoolFlag{Name: "s", Usage: "strict: images of different sizes differ (glimpse compares sizes and content, not allocation)"},
			&cli.BoolFlag{Name: "p", Usage: "show a progress bar (when standard error is a terminal)"},
			&cli.BoolFlag{Name: "allow-backing", Usage: "read backing files, data files and extents the images name (inside their directories only)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return cli.Exit("compare: need two files A B", compareError)
			}
			a, err := openForCompare(c, c.Args().Get(0), c.String("f"))
			if err != nil {
				return err
			}
			defer a.Close()
			b, err := openForCompare(c, c.Args().Get(1), c.String("F"))
			if err != nil {
				return err
			}
			defer b.Close()
			bar := startProgress(c.App.ErrWriter, c.Bool("p"), max(a.Size(), b.Size()))
			opt := convert.CompareOptions{Strict: c.Bool("s")}
			if bar != nil {
				opt.Progress = bar
			}
			r, err := convert.Compare(c.Context, a, b, opt)
			bar.Finish()
			if err != nil {
				return cli.Exit("compare: "+err.Error(), compareError)
			}
			w := c.App.Writer
			switch {
			case opt.Strict && r.SizeMismatch():
				fmt.Fprintln(w, "Strict mode: Image size mismatch!")
				return cli.Exit("", compareDiffer)
			case r.Offset >= 0 && r.Offset < min(r.SizeA, r.SizeB):
				fmt.Fprintf(w, "Content mismatch at offset %d!\n", r.Offset)
				return cli.Exit("", compareDiffer)
			}
			if r.SizeMismatch() {
				fmt.Fprintln(w, "Warning: Image size mismatch!")
			}
			if !r.Identical {
				fmt.Fprintf(w, "Content mismatch at offset %d!\n", r.Offset)
				return cli.Exit("", compareDiffer)
			}
			fmt.Fprintln(w, "Images are identical.")
			return nil
		},
	}
}

func openForCompare(c *cli.Context, name, format string) (inspect.Image, error) {
	opt := inspect.OpenOptions{AllowBacking: c.Bool("allow-backing")}
	if format != "" {
		f, err := inspect.ParseFormat(format)
		if err != nil {
			return nil, cli.Exit("compare: "+err.Error(), compareError)
		}
		opt.Format = f
	}
	img, err := inspect.OpenFile(name, opt)
	if err != nil {
		return nil, cli.Exit("compare: "+err.Error(), compareError)
	}
	return img, nil
}
