"""A small real retrieval set built from facts: capitals, chemical elements, planets, inventors.

Each fact gives a question and a passage that answers it; the hard negative is the passage of another
fact of the same kind, so lexical overlap ("capital", "element") does not give the answer away.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = """France Paris;Germany Berlin;Italy Rome;Spain Madrid;Portugal Lisbon;Poland Warsaw;Austria Vienna;
Hungary Budapest;Greece Athens;Sweden Stockholm;Norway Oslo;Finland Helsinki;Denmark Copenhagen;Ireland Dublin;
Belgium Brussels;Netherlands Amsterdam;Switzerland Bern;Czechia Prague;Romania Bucharest;Bulgaria Sofia;
Serbia Belgrade;Croatia Zagreb;Ukraine Kyiv;Russia Moscow;Turkey Ankara;Egypt Cairo;Kenya Nairobi;Nigeria Abuja;
Ghana Accra;Ethiopia Addis Ababa;Morocco Rabat;Algeria Algiers;Tunisia Tunis;Senegal Dakar;Japan Tokyo;
China Beijing;India New Delhi;Pakistan Islamabad;Bangladesh Dhaka;Thailand Bangkok;Vietnam Hanoi;
Indonesia Jakarta;Philippines Manila;Malaysia Kuala Lumpur;Iran Tehran;Iraq Baghdad;Israel Jerusalem;
Jordan Amman;Lebanon Beirut;Syria Damascus;Afghanistan Kabul;Nepal Kathmandu;Mongolia Ulaanbaatar;
Australia Canberra;New Zealand Wellington;Canada Ottawa;Mexico Mexico City;Cuba Havana;Brazil Brasilia;
Argentina Buenos Aires;Chile Santiago;Peru Lima;Colombia Bogota;Venezuela Caracas;Ecuador Quito;
Uruguay Montevideo;Paraguay Asuncion;Bolivia Sucre;Iceland Reykjavik;Estonia Tallinn;Latvia Riga;
Lithuania Vilnius;Slovakia Bratislava;Slovenia Ljubljana"""

ELEMENTS = """Hydrogen H 1;Helium He 2;Lithium Li 3;Beryllium Be 4;Boron B 5;Carbon C 6;Nitrogen N 7;Oxygen O 8;
Fluorine F 9;Neon Ne 10;Sodium Na 11;Magnesium Mg 12;Aluminium Al 13;Silicon Si 14;Phosphorus P 15;Sulfur S 16;
Chlorine Cl 17;Argon Ar 18;Potassium K 19;Calcium Ca 20;Titanium Ti 22;Chromium Cr 24;Manganese Mn 25;Iron Fe 26;
Cobalt Co 27;Nickel Ni 28;Copper Cu 29;Zinc Zn 30;Silver Ag 47;Tin Sn 50;Iodine I 53;Platinum Pt 78;Gold Au 79;
Mercury Hg 80;Lead Pb 82;Uranium U 92"""

INVENTIONS = """telephone Alexander Graham Bell 1876;light bulb Thomas Edison 1879;
printing press Johannes Gutenberg 1440;steam engine James Watt 1776;radio Guglielmo Marconi 1895;
airplane the Wright brothers 1903;
World Wide Web Tim Berners-Lee 1989;dynamite Alfred Nobel 1867;penicillin Alexander Fleming 1928;
telegraph Samuel Morse 1837;phonograph Thomas Edison 1877;television John Logie Baird 1926"""

PLANETS = """Mercury closest to the Sun;Venus hottest planet with a thick carbon dioxide atmosphere;
Earth only planet known to support life;Mars red planet with iron oxide dust;Jupiter largest planet, a gas giant;
Saturn planet with the most prominent ring system;Uranus ice giant that rotates on its side;
Neptune farthest planet from the Sun with supersonic winds"""


def _rows(table: str) -> list[str]:
    return [r.strip() for r in table.replace("\n", "").split(";")]


def facts() -> list[tuple[str, str, str]]:
    """(kind, question, passage) triples."""
    out = []
    for row in _rows(CAPITALS):
        country, capital = ("New Zealand", "Wellington") if row.startswith("New ") else row.split(" ", 1)
        out.append(("capital", f"What is the capital of {country}?", f"{capital} is the capital city of {country}."))
    for row in _rows(ELEMENTS):
        name, symbol, number = row.split()
        out.append(
            (
                "element",
                f"Which element has the symbol {symbol}?",
                f"{name} is the chemical element with symbol {symbol} and atomic number {number}.",
            )
        )
        out.append(
            (
                "number",
                f"What is the atomic number of {name.lower()}?",
                f"The atomic number of {name.lower()} is {number}; its symbol is {symbol}.",
            )
        )
    for row in _rows(INVENTIONS):
        *words, year = row.split()
        text = " ".join(words)
        for thing in (
            "telephone",
            "light bulb",
            "printing press",
            "steam engine",
            "radio",
            "airplane",
            "World Wide Web",
            "dynamite",
            "penicillin",
            "telegraph",
            "phonograph",
            "television",
        ):
            if text.startswith(thing):
                who = text[len(thing) + 1 :]
                out.append(("invention", f"Who invented the {thing}?", f"The {thing} was invented by {who} in {year}."))
                break
    for row in _rows(PLANETS):
        name, desc = row.split(" ", 1)
        out.append(("planet", f"Which planet is the {desc}?", f"{name} is the {desc} in our solar system."))
    return out


def write_split(directory: Path, *, eval_fraction: float = 0.3, seed: int = 0) -> tuple[Path, Path]:
    """train.jsonl and eval.jsonl (held-out facts) with one same-kind hard negative per example."""
    rows = facts()
    rng = random.Random(seed)
    rng.shuffle(rows)
    n_eval = int(len(rows) * eval_fraction)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in (("train", rows[n_eval:]), ("eval", rows[:n_eval])):
        with (directory / f"{name}.jsonl").open("w") as f:
            for kind, question, passage in part:
                negative = rng.choice([p for k, _, p in part if k == kind and p != passage])
                f.write(json.dumps({"query": question, "positive": passage, "negatives": [negative]}) + "\n")
        paths.append(directory / f"{name}.jsonl")
    return paths[0], paths[1]


if __name__ == "__main__":
    import sys

    print(*write_split(Path(sys.argv[1])))
