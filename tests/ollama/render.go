// Renders Ollama Modelfile templates for chats as Ollama's server does, for tests/test_ollama_modelfile.py:
//
//	go run render.go CASES.json   -> a JSON list of the rendered prompts
//
// A case is {"template", "system" (the Modelfile's SYSTEM), "messages": [{"role", "content"}, ...]}.
// The data handed to the template is built as Ollama builds it: the Modelfile's SYSTEM goes first
// when the chat does not start with a system message (server/routes.go); all system messages are
// joined by a blank line into .System and consecutive messages of one role are merged
// (template/template.go); .Messages keeps the system messages too. The template itself runs on the
// standard library's text/template, as in Ollama, with missingkey=zero. Only the standard library
// is used, so no module download is needed.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type renderCase struct {
	Template string    `json:"template"`
	System   string    `json:"system"`
	Messages []message `json:"messages"`
}

func templateData(c renderCase) map[string]any {
	msgs := c.Messages
	if len(msgs) > 0 && msgs[0].Role != "system" && c.System != "" {
		msgs = append([]message{{Role: "system", Content: c.System}}, msgs...)
	}
	var systems []string
	var merged []*message
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			systems = append(systems, m.Content)
		}
		if n := len(merged); n > 0 && merged[n-1].Role == m.Role {
			merged[n-1].Content += "\n\n" + m.Content
		} else {
			merged = append(merged, &m)
		}
	}
	return map[string]any{"System": strings.Join(systems, "\n\n"), "Messages": merged, "Tools": nil,
		"Response": "", "Think": false, "ThinkLevel": "", "IsThinkSet": false}
}

func main() {
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var cases []renderCase
	if err := json.Unmarshal(raw, &cases); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	out := make([]string, 0, len(cases))
	for i, c := range cases {
		tmpl, err := template.New("").Option("missingkey=zero").Parse(c.Template)
		if err != nil {
			fmt.Fprintf(os.Stderr, "case %d: %v\n", i, err)
			os.Exit(1)
		}
		var b strings.Builder
		if err := tmpl.Execute(&b, templateData(c)); err != nil {
			fmt.Fprintf(os.Stderr, "case %d: %v\n", i, err)
			os.Exit(1)
		}
		out = append(out, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
