package store

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"glimpse/api"
)

// What Glance Zed's image schema says about each core attribute and the known optional
// properties, checked with jsonschema's messages (the first line of them: Glance appends
// the schema fragment, which clients do not parse).
var (
	uuidPattern  = `^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$`
	uuidRE       = regexp.MustCompile(uuidPattern)
	visibilities = []string{"community", "public", "private", "shared"}
)

type attrRule struct {
	types   []string // JSON types allowed: "string", "null", "integer", "boolean", "array"
	enum    []string // allowed strings (null is allowed when types has "null")
	maxLen  int
	pattern string
}

var attrRules = map[string]attrRule{
	"id":                                    {types: []string{"string"}, pattern: uuidPattern},
	"name":                                  {types: []string{"null", "string"}, maxLen: 255},
	"visibility":                            {types: []string{"string"}, enum: visibilities},
	"protected":                             {types: []string{"boolean"}},
	"os_hidden":                             {types: []string{"boolean"}},
	"owner":                                 {types: []string{"null", "string"}, maxLen: 255},
	"container_format":                      {types: []string{"null", "string"}, enum: api.ContainerFormats},
	"disk_format":                           {types: []string{"null", "string"}, enum: api.DiskFormats},
	"min_ram":                               {types: []string{"integer"}},
	"min_disk":                              {types: []string{"integer"}},
	"tags":                                  {types: []string{"array"}},
	"kernel_id":                             {types: []string{"null", "string"}, pattern: uuidPattern},
	"ramdisk_id":                            {types: []string{"null", "string"}, pattern: uuidPattern},
	"instance_uuid":                         {types: []string{"string"}},
	"architecture":                          {types: []string{"string"}},
	"os_distro":                             {types: []string{"string"}},
	"os_version":                            {types: []string{"string"}},
	"description":                           {types: []string{"string"}},
	"cinder_encryption_key_id":              {types: []string{"string"}},
	"cinder_encryption_key_deletion_policy": {types: []string{"string"}, enum: []string{"on_image_deletion", "do_not_delete"}},
}

// coreAttributes are the attributes an image always has (stored as columns, not
// properties).
var coreAttributes = map[string]bool{
	"id": true, "name": true, "visibility": true, "protected": true, "os_hidden": true, "owner": true,
	"container_format": true, "disk_format": true, "min_ram": true, "min_disk": true, "tags": true,
}

func schemaError(format string, args ...any) *api.APIError {
	return api.Errorf(http.StatusBadRequest, "Provided object does not match schema 'image': "+format, args...)
}

// checkValue validates one attribute's JSON value against the schema.
func checkValue(key string, raw json.RawMessage) *api.APIError {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return api.Errorf(http.StatusBadRequest, "Malformed JSON in request body.")
	}
	rule, ok := attrRules[key]
	if !ok {
		rule = attrRule{types: []string{"string"}} // additionalProperties: {"type": "string"}
	}
	if !typeOK(v, raw, rule.types) {
		q := make([]string, len(rule.types))
		for i, t := range rule.types {
			q[i] = "'" + t + "'"
		}
		return schemaError("%s is not of type %s", pyRepr(v), strings.Join(q, ", "))
	}
	switch x := v.(type) {
	case string:
		if rule.enum != nil && !slices.Contains(rule.enum, x) {
			return schemaError("%s is not one of %s", pyRepr(v), enumRepr(rule))
		}
		if rule.maxLen > 0 && len([]rune(x)) > rule.maxLen {
			return schemaError("%s is too long", pyRepr(v))
		}
		if rule.pattern != "" && !regexp.MustCompile(rule.pattern).MatchString(x) {
			return schemaError("%s does not match %s", pyRepr(v), pyRepr(rule.pattern))
		}
	case []any:
		for _, it := range x {
			s, ok := it.(string)
			if !ok {
				return schemaError("%s is not of type 'string'", pyRepr(it))
			}
			if len([]rune(s)) > 255 {
				return schemaError("%s is too long", pyRepr(it))
			}
		}
	}
	return nil
}

func enumRepr(rule attrRule) string {
	var parts []string
	if slices.Contains(rule.types, "null") {
		parts = append(parts, "None")
	}
	for _, e := range rule.enum {
		parts = append(parts, pyRepr(e))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func typeOK(v any, raw json.RawMessage, types []string) bool {
	for _, t := range types {
		switch t {
		case "null":
			if v == nil {
				return true
			}
		case "string":
			if _, ok := v.(string); ok {
				return true
			}
		case "boolean":
			if _, ok := v.(bool); ok {
				return true
			}
		case "array":
			if _, ok := v.([]any); ok {
				return true
			}
		case "integer":
			if _, ok := v.(float64); ok {
				if _, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64); err == nil {
					return true
				}
			}
		}
	}
	return false
}

// pyRepr renders a JSON value as Python's repr does, as Glance's messages show values.
func pyRepr(v any) string {
	switch x := v.(type) {
	case nil:
		return "None"
	case bool:
		if x {
			return "True"
		}
		return "False"
	case float64:
		if x == float64(int64(x)) {
			return strconv.FormatInt(int64(x), 10)
		}
		return strconv.FormatFloat(x, 'g', -1, 64)
	case string:
		q := "'"
		if strings.Contains(x, "'") && !strings.Contains(x, `"`) {
			q = `"`
		}
		var b strings.Builder
		b.WriteString(q)
		for _, r := range x {
			switch {
			case r == '\\':
				b.WriteString(`\\`)
			case string(r) == q:
				b.WriteString(`\` + q)
			case r == '\n':
				b.WriteString(`\n`)
			case r == '\t':
				b.WriteString(`\t`)
			case r < 0x20:
				fmt.Fprintf(&b, `\x%02x`, r)
			default:
				b.WriteRune(r)
			}
		}
		b.WriteString(q)
		return b.String()
	case []any:
		parts := make([]string, len(x))
		for i, it := range x {
			parts[i] = pyRepr(it)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = pyRepr(k) + ": " + pyRepr(x[k])
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	return fmt.Sprint(v)
}
