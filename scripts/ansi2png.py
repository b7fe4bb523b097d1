#!/usr/bin/env python3
"""Render a terminal capture with ANSI colours (`tmux capture-pane -e -p`) to a PNG.

Used to make the README's screenshot from a real run of the TUI:

    scripts/screenshot.sh            # runs quorum in tmux, captures, calls this

Usage: ansi2png.py CAPTURE.txt OUT.png [--cols N] [--rows N] [--font-size PX]
Needs Pillow and a monospace TTF (DejaVu Sans Mono by default).
"""

import argparse
import re
import sys
import unicodedata

from PIL import Image, ImageDraw, ImageFont

FONT_DIR = "/usr/share/fonts/truetype/dejavu/"
DEFAULT_FG = (220, 223, 228)
DEFAULT_BG = (24, 26, 33)

# xterm's 16 colours (a calm variant).
BASE16 = [
    (40, 42, 54), (224, 108, 117), (152, 195, 121), (229, 192, 123),
    (97, 175, 239), (198, 120, 221), (86, 182, 194), (200, 204, 212),
    (92, 99, 112), (255, 123, 133), (180, 225, 150), (255, 215, 140),
    (125, 195, 255), (220, 150, 240), (120, 210, 220), (255, 255, 255),
]


def xterm256(n):
    if n < 16:
        return BASE16[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return (steps[n // 36], steps[(n // 6) % 6], steps[n % 6])
    v = 8 + (n - 232) * 10
    return (v, v, v)


class Style:
    def __init__(self):
        self.reset()

    def reset(self):
        self.fg = None
        self.bg = None
        self.bold = False
        self.dim = False
        self.italic = False
        self.underline = False
        self.reverse = False

    def copy(self):
        s = Style()
        s.__dict__.update(self.__dict__)
        return s

    def apply(self, params):
        i = 0
        if not params:
            params = [0]
        while i < len(params):
            p = params[i]
            if p == 0:
                self.reset()
            elif p == 1:
                self.bold = True
            elif p == 2:
                self.dim = True
            elif p == 3:
                self.italic = True
            elif p == 4:
                self.underline = True
            elif p == 7:
                self.reverse = True
            elif p == 22:
                self.bold = self.dim = False
            elif p == 23:
                self.italic = False
            elif p == 24:
                self.underline = False
            elif p == 27:
                self.reverse = False
            elif 30 <= p <= 37:
                self.fg = BASE16[p - 30]
            elif p == 39:
                self.fg = None
            elif 40 <= p <= 47:
                self.bg = BASE16[p - 40]
            elif p == 49:
                self.bg = None
            elif 90 <= p <= 97:
                self.fg = BASE16[p - 90 + 8]
            elif 100 <= p <= 107:
                self.bg = BASE16[p - 100 + 8]
            elif p in (38, 48) and i + 1 < len(params):
                if params[i + 1] == 5 and i + 2 < len(params):
                    c = xterm256(params[i + 2])
                    i += 2
                elif params[i + 1] == 2 and i + 4 < len(params):
                    c = tuple(params[i + 2:i + 5])
                    i += 4
                else:
                    c = None
                if p == 38:
                    self.fg = c
                else:
                    self.bg = c
            i += 1


SGR = re.compile(r"\x1b\[([0-9;:]*)m")
OTHER_ESC = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07|[()][A-Z0-9])")


def parse(text, cols, rows):
    grid = [[(" ", Style()) for _ in range(cols)] for _ in range(rows)]
    style = Style()
    for y, line in enumerate(text.split("\n")[:rows]):
        x = 0
        pos = 0
        while pos < len(line) and x < cols:
            m = SGR.match(line, pos)
            if m:
                params = [int(p) if p else 0 for p in re.split("[;:]", m.group(1))] if m.group(1) else []
                style.apply(params)
                pos = m.end()
                continue
            m = OTHER_ESC.match(line, pos)
            if m:
                pos = m.end()
                continue
            ch = line[pos]
            pos += 1
            if unicodedata.combining(ch):
                continue
            grid[y][x] = (ch, style.copy())
            wide = unicodedata.east_asian_width(ch) in ("W", "F")
            x += 2 if wide else 1
            if wide and x - 1 < cols:
                grid[y][x - 1] = ("", style.copy())
    return grid


def render(grid, out, font_size):
    regular = ImageFont.truetype(FONT_DIR + "DejaVuSansMono.ttf", font_size)
    bold = ImageFont.truetype(FONT_DIR + "DejaVuSansMono-Bold.ttf", font_size)
    italic = ImageFont.truetype(FONT_DIR + "DejaVuSansMono-Oblique.ttf", font_size)
    left, top, right, bottom = regular.getbbox("M")
    cw = regular.getlength("M")
    ch = int(font_size * 1.25)
    rows, cols = len(grid), len(grid[0])
    pad = 16
    img = Image.new("RGB", (int(cols * cw) + 2 * pad, rows * ch + 2 * pad), DEFAULT_BG)
    d = ImageDraw.Draw(img)
    for y, row in enumerate(grid):
        for x, (c, s) in enumerate(row):
            fg = s.fg or DEFAULT_FG
            bg = s.bg
            if s.reverse:
                fg, bg = (bg or DEFAULT_BG), fg
            if s.dim:
                base = bg or DEFAULT_BG
                fg = tuple((a + b) // 2 for a, b in zip(fg, base))
            px, py = pad + x * cw, pad + y * ch
            if bg:
                d.rectangle([px, py, px + cw * (2 if c and unicodedata.east_asian_width(c) in ("W", "F") else 1), py + ch], fill=bg)
            if c and c != " ":
                f = bold if s.bold else italic if s.italic else regular
                # Box-drawing glyphs fill the cell height so borders join.
                if "\u2500" <= c <= "\u257f":
                    d.text((px, py + (ch - font_size) / 2 - 1), c, font=f, fill=fg)
                else:
                    d.text((px, py + (ch - font_size) / 2), c, font=f, fill=fg)
            if s.underline:
                d.line([px, py + ch - 2, px + cw, py + ch - 2], fill=fg)
    img.save(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture")
    ap.add_argument("out")
    ap.add_argument("--cols", type=int, default=0)
    ap.add_argument("--rows", type=int, default=0)
    ap.add_argument("--font-size", type=int, default=14)
    a = ap.parse_args()
    text = open(a.capture, encoding="utf-8", errors="replace").read().rstrip("\n")
    lines = text.split("\n")
    cols = a.cols or max(len(SGR.sub("", line)) for line in lines)
    rows = a.rows or len(lines)
    render(parse(text, cols, rows), a.out, a.font_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
