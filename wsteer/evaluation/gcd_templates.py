"""The GCD data's phrasing (paper §5): 7 styles, each with its own templates for every part of a prompt and a
reply, and the forms one Euclid step is written in. Parts are only combined when their styles match (gcd.py).

Changing any text here changes the generated data: bump `gcd.GCD_VERSION`.
"""

STYLES = ("formal", "informal", "casual", "confident", "insecure", "friendly", "authoritative")

# --------------------------------------------------------------------------------------------------------------
# Phrasing templates, per style (paper §5: 7 styles; parts are only combined when their styles match).
# {a}, {b}: the pair as asked; {g}: the GCD the text concludes.
# --------------------------------------------------------------------------------------------------------------
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "formal": {
        "instruction": (
            "Determine the greatest common divisor of {a} and {b} using the Euclidean algorithm.",
            "Compute GCD({a}, {b}) by means of the Euclidean algorithm.",
            "Please find the greatest common divisor of {a} and {b}, applying the Euclidean algorithm.",
        ),
        "help": ("I would appreciate assistance in finding GCD({a}, {b}).",
                 "Could you assist me in determining the greatest common divisor of {a} and {b}?"),
        "cue": ("My approach is as follows:", "I have proceeded as follows:"),
        "verify": ("Could you kindly verify whether my result is correct?", "Is my conclusion correct?"),
        "user_intro": ("I applied the Euclidean algorithm to {a} and {b}.",),
        "user_end": ("Therefore, GCD({a}, {b}) = {g}.", "Hence the greatest common divisor is {g}."),
        "sol_intro": ("We apply the Euclidean algorithm to {a} and {b}.",),
        "sol_end": ("The last non-zero remainder is {g}; therefore GCD({a}, {b}) = {g}.",),
        "confirm": ("Yes, your solution is correct. Each division step is accurate, and GCD({a}, {b}) = {g}.",
                    "Your work is correct: the Euclidean algorithm yields GCD({a}, {b}) = {g}."),
        "correct": ("Your solution contains an error.", "I am afraid your result is not correct."),
    },
    "informal": {
        "instruction": ("Find the GCD of {a} and {b} with the Euclidean algorithm.",
                        "Work out GCD({a}, {b}) using Euclid's algorithm.",
                        "Can you get the GCD of {a} and {b}? Use the Euclidean algorithm."),
        "help": ("Can you help me find GCD({a}, {b})?", "I'm trying to find the GCD of {a} and {b}."),
        "cue": ("Here's my approach:", "Here's what I did:"),
        "verify": ("Am I right?", "Does that look right?"),
        "user_intro": ("I used the Euclidean algorithm on {a} and {b}.",),
        "user_end": ("So GCD({a}, {b}) = {g}.", "So the GCD is {g}."),
        "sol_intro": ("Let's use the Euclidean algorithm on {a} and {b}.",),
        "sol_end": ("The last non-zero remainder is {g}, so GCD({a}, {b}) = {g}.",),
        "confirm": ("Yes, that's right! Your steps check out and GCD({a}, {b}) = {g}.",
                    "Yep, your answer is correct: GCD({a}, {b}) = {g}."),
        "correct": ("That's not quite right: there's a mistake in your work.", "Not quite, I think you made a mistake."),
    },
    "casual": {
        "instruction": ("gcd({a}, {b})? use the euclidean algorithm pls",
                        "what's the gcd of {a} and {b}? do it with euclid's algorithm",
                        "quick one: gcd of {a} and {b}, euclidean algorithm"),
        "help": ("hey, can you help me with gcd({a}, {b})?", "need help with the gcd of {a} and {b}"),
        "cue": ("here's what i got:", "this is how i did it:"),
        "verify": ("right?", "is that right?"),
        "user_intro": ("euclid's algorithm on {a} and {b}:",),
        "user_end": ("so gcd({a}, {b}) = {g}", "so the gcd is {g}"),
        "sol_intro": ("Sure, Euclid's algorithm on {a} and {b}:",),
        "sol_end": ("Last non-zero remainder is {g}, so GCD({a}, {b}) = {g}.",),
        "confirm": ("Yep, you got it! GCD({a}, {b}) = {g}.", "Yes, that's right, GCD({a}, {b}) = {g}. Nice work!"),
        "correct": ("Hmm, not quite, there's a slip in there.", "Close, but that's wrong."),
    },
    "confident": {
        "instruction": ("Find GCD({a}, {b}) with the Euclidean algorithm.",
                        "Use the Euclidean algorithm to find the GCD of {a} and {b}."),
        "help": ("I need GCD({a}, {b}).", "I've worked out the GCD of {a} and {b}."),
        "cue": ("Here's my solution:", "Here's how I solved it:"),
        "verify": ("I'm sure this is right, just confirm it.", "Confirm my answer."),
        "user_intro": ("Euclidean algorithm on {a} and {b}:",),
        "user_end": ("So GCD({a}, {b}) = {g}, no doubt.", "The GCD is clearly {g}."),
        "sol_intro": ("Apply the Euclidean algorithm to {a} and {b}.",),
        "sol_end": ("The last non-zero remainder is {g}, so GCD({a}, {b}) = {g}.",),
        "confirm": ("Confirmed: your solution is correct and GCD({a}, {b}) = {g}.",
                    "You're right. Every step holds, and GCD({a}, {b}) = {g}."),
        "correct": ("That's incorrect: one of your steps is wrong.", "No, your answer is wrong."),
    },
    "insecure": {
        "instruction": ("Sorry if this is basic, but could you find GCD({a}, {b}) using the Euclidean algorithm?",
                        "I'm not great at math... can you find the GCD of {a} and {b} with the Euclidean algorithm?"),
        "help": ("I'm not very confident, but I tried to find GCD({a}, {b}).",
                 "I'm a bit unsure about GCD({a}, {b})."),
        "cue": ("This is what I tried:", "Here's my attempt, I think:"),
        "verify": ("Is this right? I'm really not sure.", "Could you check if I got it right?"),
        "user_intro": ("I tried the Euclidean algorithm on {a} and {b}.",),
        "user_end": ("So I think GCD({a}, {b}) = {g}?", "So maybe the GCD is {g}?"),
        "sol_intro": ("No problem! We use the Euclidean algorithm on {a} and {b}.",),
        "sol_end": ("The last non-zero remainder is {g}, so GCD({a}, {b}) = {g}.",),
        "confirm": ("Yes, you got it right! Don't worry, GCD({a}, {b}) = {g}.",
                    "Your answer is correct, so you can be confident: GCD({a}, {b}) = {g}."),
        "correct": ("Don't worry, but there's a mistake in your work.", "Not quite, your answer is not correct."),
    },
    "friendly": {
        "instruction": ("Hi! Could you find GCD({a}, {b}) using the Euclidean algorithm?",
                        "Hello! I'd love to see the GCD of {a} and {b} worked out with Euclid's algorithm."),
        "help": ("Hi! Could you help me find GCD({a}, {b})?", "Hey there! I'm working on the GCD of {a} and {b}."),
        "cue": ("Here's my approach:", "Here's how I went about it:"),
        "verify": ("Could you check my result? Thanks!", "Did I get it right?"),
        "user_intro": ("I used the Euclidean algorithm on {a} and {b}.",),
        "user_end": ("So GCD({a}, {b}) = {g}!", "So the GCD is {g}."),
        "sol_intro": ("Happy to help! We use the Euclidean algorithm on {a} and {b}.",),
        "sol_end": ("The last non-zero remainder is {g}, so GCD({a}, {b}) = {g}.",),
        "confirm": ("Great job, your solution is correct! GCD({a}, {b}) = {g}.",
                    "Yes, you're right! All your steps are correct and GCD({a}, {b}) = {g}."),
        "correct": ("Good try, but there's a mistake in your solution.", "Thanks for sharing! Your answer isn't correct, though."),
    },
    "authoritative": {
        "instruction": ("Find the greatest common divisor of {a} and {b}. Use the Euclidean algorithm.",
                        "Apply the Euclidean algorithm and state GCD({a}, {b})."),
        "help": ("I require GCD({a}, {b}).", "Check my computation of the GCD of {a} and {b}."),
        "cue": ("My solution:", "Work shown below:"),
        "verify": ("Verify my result.", "State whether my answer is correct."),
        "user_intro": ("Euclidean algorithm applied to {a} and {b}.",),
        "user_end": ("Thus GCD({a}, {b}) = {g}.", "Result: the GCD is {g}."),
        "sol_intro": ("Apply the Euclidean algorithm to {a} and {b}.",),
        "sol_end": ("The last non-zero remainder is {g}. Therefore GCD({a}, {b}) = {g}.",),
        "confirm": ("Verified: your solution is correct. GCD({a}, {b}) = {g}.",
                    "Your result is correct. GCD({a}, {b}) = {g}."),
        "correct": ("Your solution is incorrect.", "Your result is wrong."),
    },
}

# One step of a trace, x = q·y + r. A solution uses one form for all its steps.
STEP_FORMS = (
    "{x} = {q} × {y} + {r}",
    "Divide {x} by {y}: {x} = {q} × {y} + {r}",
    "{x} ÷ {y} = {q} remainder {r}, so {x} = {q} × {y} + {r}",
)
