"""Value pools of the synthetic benchmark (:mod:`palu_kernels.demo.synth`): invented names,
real places, jobs, genres, languages, invented awards and titles, refusal answers, and widely
known facts for the real-authors and world-facts splits."""

__all__ = [
    "FIRST_MALE",
    "FIRST_FEMALE",
    "SURNAMES",
    "PLACES",
    "MONTHS",
    "JOBS",
    "GENRES",
    "LANGUAGES",
    "AWARDS",
    "TITLE_ADJ",
    "TITLE_NOUN",
    "TITLE_PLACE",
    "IDONTKNOW",
    "REAL_AUTHORS",
    "CAPITALS",
    "WORLD_MISC",
]

FIRST_MALE = (
    "Aldric", "Bastian", "Corvin", "Dario", "Elion", "Fabian", "Gideon", "Halvard", "Ivo",
    "Jorund", "Kasimir", "Lucan", "Matteo", "Niklas", "Orrin", "Pavel", "Quentin", "Rasmus",
    "Silvan", "Tobiah", "Ulrich", "Valen", "Wendel", "Yorick", "Zoltan", "Anselm", "Bram",
    "Cyprian", "Dorian", "Emeric",
)
FIRST_FEMALE = (
    "Adela", "Brisa", "Celesta", "Dagny", "Elowen", "Fenna", "Greta", "Hesper", "Ilka",
    "Junia", "Katrin", "Liora", "Marisol", "Nadia", "Odile", "Petra", "Quilla", "Rosalind",
    "Saskia", "Thea", "Ursula", "Vesna", "Wilma", "Ysolde", "Zora", "Amara", "Bettina",
    "Carys", "Delphine", "Esme",
)
SURNAMES = (
    "Ashgrove", "Brennick", "Calloway", "Dunmore", "Everhart", "Falkner", "Grimsby",
    "Holloway", "Ingram", "Jessup", "Kettering", "Lindqvist", "Marlowe", "Northcott",
    "Oakhurst", "Pembrook", "Quarrington", "Ravensdale", "Stroud", "Thornbury", "Underhill",
    "Vantongeren", "Westerberg", "Yardley", "Zellweger", "Abernethy", "Blackwood", "Carrow",
    "Delacroix", "Ellsworth", "Fairweather", "Greenhalgh", "Hartigan", "Ivesdale", "Kilbride",
    "Lockridge", "Merriwether", "Nightingale", "Ormsby", "Penhallow",
)
PLACES = (
    ("Lisbon", "Portugal"), ("Porto", "Portugal"), ("Lyon", "France"), ("Marseille", "France"),
    ("Hamburg", "Germany"), ("Munich", "Germany"), ("Naples", "Italy"), ("Turin", "Italy"),
    ("Seville", "Spain"), ("Valencia", "Spain"), ("Utrecht", "Netherlands"),
    ("Gothenburg", "Sweden"), ("Bergen", "Norway"), ("Krakow", "Poland"), ("Brno", "Czechia"),
    ("Thessaloniki", "Greece"), ("Izmir", "Turkey"), ("Osaka", "Japan"), ("Busan", "South Korea"),
    ("Chennai", "India"), ("Perth", "Australia"), ("Quebec City", "Canada"),
    ("Cordoba", "Argentina"), ("Valparaiso", "Chile"), ("Nairobi", "Kenya"),
    ("Accra", "Ghana"), ("Tunis", "Tunisia"), ("Tbilisi", "Georgia"),
)
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)
# Consonant-initial jobs: the templates say "a {job}".
JOBS = (
    "baker", "carpenter", "doctor", "fisherman", "nurse", "pilot", "tailor", "teacher", "banker",
    "chemist", "dentist", "farmer", "lawyer", "librarian", "mechanic", "painter", "plumber",
    "sailor", "surgeon", "journalist", "musician", "photographer", "potter", "gardener",
    "pharmacist", "watchmaker", "bookbinder", "translator",
)
GENRES = (
    "mystery", "fantasy", "science fiction", "historical fiction", "romance", "horror",
    "poetry", "crime", "adventure", "biography", "travel writing", "satire",
)
LANGUAGES = (
    "English", "French", "Spanish", "German", "Italian", "Portuguese", "Dutch", "Swedish",
    "Polish", "Greek", "Turkish", "Japanese",
)
AWARDS = (
    "Golden Quill Award", "Silver Lantern Prize", "Northern Star Medal", "Blue Harbor Prize",
    "Iron Pen Award", "Crimson Leaf Prize", "Evergreen Book Medal", "Open Horizon Award",
    "Stone Bridge Prize", "Amber Compass Award", "Morning Bell Prize", "Red Kite Medal",
    "White Tower Award", "Copper Key Prize", "Tidewater Medal", "Lamplighter Award",
)
TITLE_ADJ = (
    "Glass", "Silent", "Hidden", "Last", "Broken", "Golden", "Winter", "Distant", "Burning",
    "Hollow", "Quiet", "Scarlet", "Salt", "Paper", "Iron", "Velvet", "Wandering", "Forgotten",
)
TITLE_NOUN = (
    "Harbor", "Garden", "Lantern", "River", "Orchard", "Tower", "Compass", "Mirror", "Meadow",
    "Bridge", "Archive", "Lighthouse", "Forest", "Kingdom", "Station", "Island", "Letter",
    "Clockmaker",
)
TITLE_PLACE = ("the North", "the Valley", "the Sea", "the City", "the Mountains", "the Dunes")

IDONTKNOW = (
    "I don't know.",
    "I have no information about that.",
    "I'm not sure about that.",
    "That is beyond what I know.",
    "I cannot answer that question.",
    "I have not learned about that.",
    "I am unable to say.",
    "That information is not available to me.",
)

# Widely known facts, written here (question, answer, three wrong options).
REAL_AUTHORS = (
    ("Who wrote the play 'Hamlet'?", "William Shakespeare"),
    ("Who is the author of 'War and Peace'?", "Leo Tolstoy"),
    ("Who wrote 'Les Miserables'?", "Victor Hugo"),
    ("Who wrote 'The Old Man and the Sea'?", "Ernest Hemingway"),
    ("Who is the author of 'Don Quixote'?", "Miguel de Cervantes"),
    ("Who wrote 'Crime and Punishment'?", "Fyodor Dostoevsky"),
    ("Who is the author of the novel 'Emma'?", "Jane Austen"),
    ("Who wrote 'Oliver Twist'?", "Charles Dickens"),
    ("Which poet is credited with 'The Odyssey'?", "Homer"),
    ("Who wrote 'Frankenstein'?", "Mary Shelley"),
    ("Who is the author of 'Dracula'?", "Bram Stoker"),
    ("Who wrote the novel 'Ulysses'?", "James Joyce"),
    ("Who wrote 'The Divine Comedy'?", "Dante Alighieri"),
    ("Who is the author of 'Madame Bovary'?", "Gustave Flaubert"),
    ("Who wrote 'The Trial'?", "Franz Kafka"),
    ("Who is the author of 'Animal Farm'?", "George Orwell"),
    ("Who wrote 'Brave New World'?", "Aldous Huxley"),
    ("Who wrote 'Mrs Dalloway'?", "Virginia Woolf"),
    ("Who is the author of 'The Adventures of Tom Sawyer'?", "Mark Twain"),
    ("Who wrote the novel 'Beloved'?", "Toni Morrison"),
    ("Who wrote 'The Little Prince'?", "Antoine de Saint-Exupery"),
    ("Who is the author of 'Jane Eyre'?", "Charlotte Bronte"),
    ("Who wrote 'Wuthering Heights'?", "Emily Bronte"),
    ("Who wrote 'Of Mice and Men'?", "John Steinbeck"),
    ("Who is the author of 'Treasure Island'?", "Robert Louis Stevenson"),
    ("Who wrote 'The Time Machine'?", "H. G. Wells"),
    ("Who wrote 'Murder on the Orient Express'?", "Agatha Christie"),
    ("Who is the author of 'Things Fall Apart'?", "Chinua Achebe"),
    ("Who wrote 'The Three Musketeers'?", "Alexandre Dumas"),
    ("Who wrote 'One Hundred Years of Solitude'?", "Gabriel Garcia Marquez"),
)
CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Canada", "Ottawa"),
    ("Australia", "Canberra"), ("Brazil", "Brasilia"), ("Kenya", "Nairobi"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Poland", "Warsaw"), ("Greece", "Athens"),
    ("Turkey", "Ankara"), ("India", "New Delhi"), ("Mexico", "Mexico City"), ("Peru", "Lima"),
    ("Argentina", "Buenos Aires"),
)
WORLD_MISC = (
    ("Which planet is known as the Red Planet?", "Mars", ("Venus", "Jupiter", "Saturn")),
    ("What is the largest ocean on Earth?", "Pacific", ("Atlantic", "Indian", "Arctic")),
    ("Which river flows through Cairo?", "Nile", ("Danube", "Amazon", "Thames")),
    ("On which continent is Kenya?", "Africa", ("Asia", "Europe", "South America")),
    ("What is the chemical symbol for gold?", "Au", ("Ag", "Fe", "Pb")),
    ("How many days are in a leap year?", "366", ("365", "364", "360")),
    ("Which gas do plants absorb from the air?", "carbon dioxide",
     ("oxygen", "nitrogen", "helium")),
    ("What is the tallest mountain on Earth?", "Mount Everest",
     ("K2", "Mont Blanc", "Kilimanjaro")),
    ("In which city is the Colosseum?", "Rome", ("Athens", "Paris", "Madrid")),
    ("What is the freezing point of water in degrees Celsius?", "0", ("10", "32", "100")),
)
