"""The committed calibration sample of calibrated recipes (`int4-cal`): text written for the
project, unrelated to the evaluation text the quality benchmark measures on
(benchmarks/data/evaluation.txt), so that calibrating and measuring never see the same tokens."""

from __future__ import annotations

TEXT = """\
The lighthouse keeper kept a notebook in which every evening she wrote the wind, the height of
the swell and the number of ships she had counted since morning. Most days the entries were
short. In winter, when storms came in from the west and the lamp had to be trimmed twice a night,
the pages filled with small, careful handwriting about ice on the gallery rail and the sound the
glass made when the gusts struck it.

A recipe for bread needs four things: flour, water, salt and time. Mix the flour with most of the
water and leave it for half an hour, so that the flour drinks. Add the salt and the rest of the
water, fold the dough over itself every thirty minutes for two hours, then shape it and let it
rise slowly in a cool place overnight. Bake it in a very hot oven, covered at first to keep the
steam in, and uncovered for the last twenty minutes until the crust is dark.

In a binary search we keep two indices, low and high, that bracket the value we are looking for.
At each step we look at the element halfway between them. If it is smaller than the target we
move low past it; if it is larger we move high below it. Because the interval halves every time,
a sorted list of a million entries needs at most twenty comparisons. The classic bug is computing
the midpoint as (low + high) / 2 with fixed-width integers, which overflows for large arrays.

def moving_average(values, window):
    total = sum(values[:window])
    averages = [total / window]
    for index in range(window, len(values)):
        total += values[index] - values[index - window]
        averages.append(total / window)
    return averages

The committee met on Tuesday to discuss the budget for the coming year. The treasurer reported
that membership fees had risen by eight percent while the cost of renting the hall had doubled.
After a long debate the members agreed to hold every second meeting online, to publish the
minutes within a week, and to ask the city council for a grant toward the summer festival.

Photosynthesis takes place mainly in the leaves. Chlorophyll absorbs red and blue light and
reflects green, which is why plants look green to us. The energy of the absorbed light splits
water molecules, releasing oxygen, and drives the reactions that build sugars from carbon
dioxide. A single large tree can release enough oxygen in a season for several people to breathe.

"Where are you going?" asked the boy. "To the market, before the rain," said his grandmother,
pulling on her coat. "Can I come?" "Only if you carry the basket back." He laughed and ran ahead
of her down the lane, past the bakery, the closed cinema and the square where old men played
chess under the plane trees, arguing about moves made thirty years ago.

Les trains régionaux partent toutes les heures de la gare centrale. Der Zug nach Berlin hat heute
zwanzig Minuten Verspätung. El museo abre a las diez y cierra a las seis, excepto los lunes.

The mountain road climbs in forty-eight hairpin bends from the valley floor to the pass at 2,757
metres. Cyclists reach the top in about two hours; the record is just under fifty minutes. Snow
closes the pass from October to June, and in some years the ploughs do not clear it before July.
"""
